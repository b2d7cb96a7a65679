# Task-scheduler guide, "Scheduling a Task" (rebuilt from its description). A job named
# "health_check" runs every 60 seconds, the first time 60 seconds after start.
# Run: python examples/task_scheduler/monitor_service.py

from daebus import Daebus, direct_logger


# stand-in for the document's check_system_health()
def check_system_health():
    return "ok"

app = Daebus(__name__)

@app.background("health_check", 60)  # every 60 seconds
def health_check():
    try:
        status = check_system_health()
        direct_logger.info(f"Health check completed: {status}")
    except Exception as e:
        direct_logger.error(f"Health check failed: {e}")

if __name__ == "__main__":
    app.run(service="monitor_service")
