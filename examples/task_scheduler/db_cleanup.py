# Task-scheduler guide, "Cleanup Jobs" (rebuilt from its description). A daily job
# with its own error handling. The guide's app has no `app.run(...)`; it is added (the
# service name is ours).
# Run: python examples/task_scheduler/db_cleanup.py

import datetime

from daebus import Daebus, direct_logger


# stand-ins for the document's delete_old_logs(), cleanup_temp_files() and
# optimize_database()
def delete_old_logs(cutoff):
    return 0

def cleanup_temp_files(cutoff):
    return 0

def optimize_database():
    pass

app = Daebus(__name__)

@app.background("db_cleanup", 86400)  # daily
def database_cleanup():
    try:
        # Keep the last 30 days
        cutoff = datetime.datetime.now() - datetime.timedelta(days=30)

        deleted_logs = delete_old_logs(cutoff)
        direct_logger.info(f"Deleted {deleted_logs} old log entries")

        deleted_files = cleanup_temp_files(cutoff)
        direct_logger.info(f"Deleted {deleted_files} temporary files")

        optimize_database()
        direct_logger.info("Database optimized")
    except Exception as e:
        direct_logger.error(f"Database cleanup failed: {e}")

if __name__ == "__main__":
    app.run(service="db_cleanup_service")
