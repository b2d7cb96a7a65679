# Threads guide, "Creating a Background Thread" (rebuilt from its description). The
# thread starts with the service and loops while `running()` is true; it turns false
# when the service stops (Ctrl-C or SIGTERM).
# Run: python examples/threads/worker_thread.py

import time

from daebus import Daebus, direct_logger

# stand-in for the document's process_work_items(): counts the rounds
work_rounds = 0

def process_work_items():
    global work_rounds
    work_rounds += 1

app = Daebus(__name__)

@app.thread("worker_thread")
def continuous_worker(running):
    direct_logger.info("Worker thread started")

    while running():
        try:
            process_work_items()
            time.sleep(0.1)  # don't spin
        except Exception as e:
            direct_logger.error(f"Worker thread error: {e}")

    direct_logger.info("Worker thread stopped")

if __name__ == "__main__":
    app.run(service="worker_service")
