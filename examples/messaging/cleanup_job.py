# Messaging guide, "Thread Safety": an app with a background job and no
# `app.run(...)`; the `app.run(...)` block is added (the service name is ours).
# Run: python examples/messaging/cleanup_job.py

from daebus import Daebus, direct_logger

app = Daebus(__name__)

@app.background("cleanup", 3600)  # Run hourly
def cleanup_job():
    try:
        # Perform cleanup
        direct_logger.info("Cleanup job completed")
    except Exception as e:
        direct_logger.error(f"Cleanup job failed: {e}")

if __name__ == "__main__":
    app.run(service="cleanup_service")
