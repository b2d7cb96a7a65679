# Task-scheduler guide, "Error Handling" (rebuilt from its description). The job
# catches its own exceptions; one it did not catch would be logged and the job would
# keep its schedule. The guide shows a lone job; it is completed into a service (the
# import line, the app and the `app.run(...)` block are added).
# Run: python examples/task_scheduler/cleanup.py

from daebus import Daebus, direct_logger


# stand-in for the document's delete_old_records(): how many records it removed
def delete_old_records():
    return 0

app = Daebus(__name__)

@app.background("cleanup", 3600)  # hourly
def cleanup_old_data():
    try:
        deleted = delete_old_records()
        direct_logger.info(f"Cleanup completed: {deleted} records removed")
    except Exception as e:
        # Log it and let the next run try again
        direct_logger.error(f"Cleanup failed: {e}")

if __name__ == "__main__":
    app.run(service="cleanup_service")
