# Task-scheduler guide, "Thread Safety" (rebuilt from its description). A job reads
# and resets a counter that other threads update under a lock. The guide's app has no
# `app.run(...)`; it is added (the service name is ours).
# Run: python examples/task_scheduler/metrics_reporter.py

import threading

from daebus import Daebus, direct_logger

app = Daebus(__name__)

# Shared between threads, so guarded by a lock
request_counter = 0
counter_lock = threading.Lock()

@app.background("metrics_reporter", 300)  # every 5 minutes
def report_metrics():
    global request_counter

    # Take the count and start again from zero, atomically
    with counter_lock:
        current_count = request_counter
        request_counter = 0

    direct_logger.info(f"Handled {current_count} requests in the last 5 minutes")

if __name__ == "__main__":
    app.run(service="request_metrics")
