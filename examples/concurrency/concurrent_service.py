# Concurrency guide, "Example: Concurrent Message Processing" (rebuilt from its
# description). Slow "process" messages run side by side on 20 workers, each reading its
# own `app.request` and answering through its own `app.response` (in 0.0.31 these were
# shared between threads and `app.response.success` did not exist). A handler that
# raises sends its caller an error reply and does not disturb the others.
# Run: python examples/concurrency/concurrent_service.py

import threading
import time

from daebus import Daebus

app = Daebus("concurrent_service", max_workers=20)

# Which messages were handled, updated from many threads
processed = []
process_lock = threading.Lock()

@app.action("process")
def handle_process():
    message_id = app.request.payload.get("id")
    process_time = app.request.payload.get("process_time", 0.5)

    # Pretend to work
    time.sleep(process_time)

    with process_lock:
        processed.append(message_id)

    return app.response.success({
        "id": message_id,
        "processed_at": time.time()
    })

if __name__ == "__main__":
    app.run("concurrent_service")
