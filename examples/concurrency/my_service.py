# Concurrency guide, its snippets completed into one service (rebuilt from its
# description). The guide writes each snippet against `app = Daebus("my_service",
# max_workers=20)`; the `app.run(...)` block is added.
# What 0.0.31 got wrong and this now does as the guide says:
# - `app.request` and `app.response` are the current message's own, also when 20
#   handlers run at once, and `app.response.success(...)` replies;
# - a `@app.thread` function may take no argument and loop on `app.is_running()`.
# Run: python examples/concurrency/my_service.py

import threading
import time

from daebus import Daebus, direct_logger

# Up to 20 messages are handled at the same time (the default is 10)
app = Daebus("my_service", max_workers=20)

@app.action("process_data")
def handle_process_data():
    # This message's own request, even with other handlers running
    request_id = app.request.request_id
    data = app.request.payload

    # ... work on the data ...

    # The reply goes to this message's caller
    return app.response.success({"request_id": request_id, "processed": data})

# A counter shared by every handler thread
counter_lock = threading.Lock()
counter = 0

@app.action("increment")
def handle_increment():
    global counter
    with counter_lock:
        counter += 1
    return app.response.success({"new_value": counter})

# Long-running work belongs in a background thread, not in a handler
batches_processed = 0

@app.thread("data_processor")
def process_data_continuously():
    global batches_processed
    while app.is_running():
        batches_processed += 1  # one batch of background work
        time.sleep(0.5)
    direct_logger.info("Data processor stopped")

if __name__ == "__main__":
    app.run(service="my_service")
