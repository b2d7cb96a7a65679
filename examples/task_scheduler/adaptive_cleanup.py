# Task-scheduler guide, "Dynamic Intervals" (rebuilt from its description). The task
# object is taken from `app.background_tasks["adaptive_cleanup"]` at import time, and the
# "adjust_schedule" action sets its `interval`, which reschedules the job at once.
# (In daebus 0.0.31 `background_tasks` was a list and this raised TypeError.) The
# guide's app has no `app.run(...)`; it is added (the service name is ours).
# Run: python examples/task_scheduler/adaptive_cleanup.py

from daebus import Daebus, direct_logger, request, response

app = Daebus(__name__)

@app.background("adaptive_cleanup", 3600)  # hourly to begin with
def cleanup_job():
    direct_logger.info("Adaptive cleanup ran")

# Keep the task for later changes
cleanup_task = app.background_tasks["adaptive_cleanup"]

@app.action("adjust_schedule")
def adjust_cleanup_interval():
    new_interval = request.payload.get("interval", 3600)

    if cleanup_task:
        cleanup_task.interval = new_interval
        return response.send({"updated": True, "new_interval": new_interval})
    else:
        return response.error("Task not found")

if __name__ == "__main__":
    app.run(service="adaptive_cleanup_service")
