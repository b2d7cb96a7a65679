# Task-scheduler guide, "One-time Tasks" (rebuilt from its description). The action
# starts a daemon `threading.Timer` and answers at once. The guide shows a lone
# handler; it is completed into a service (the import lines, the app and the
# `app.run(...)` block are added).
# Run: python examples/task_scheduler/one_time.py

import threading

from daebus import Daebus, direct_logger, request, response

app = Daebus(__name__)

@app.action("schedule_one_time")
def schedule_one_time_task():
    delay = request.payload.get("delay", 60)  # seconds

    def delayed_task():
        try:
            direct_logger.info("One-time task executed")
        except Exception as e:
            direct_logger.error(f"One-time task failed: {e}")

    # A daemon timer does not keep the process alive at exit
    timer = threading.Timer(delay, delayed_task)
    timer.daemon = True
    timer.start()

    return response.send({"scheduled": True, "delay": delay})

if __name__ == "__main__":
    app.run(service="one_time_service")
