# Threads guide, "Accessing Shared Resources" (rebuilt from its description). The
# thread refreshes `shared_data` under a lock every 10 seconds; the "get_current_data"
# action answers with a copy. The guide's app has no `app.run(...)`; it is added (the
# service name is ours).
# Run: python examples/threads/data_collector.py

import threading
import time

from daebus import Daebus, direct_logger, response


# stand-in for the document's fetch_external_data()
def fetch_external_data():
    return {"temperature": 21.5, "humidity": 40}

app = Daebus(__name__)

shared_data = {}
data_lock = threading.Lock()

@app.thread("data_collector")
def collect_data(running):
    while running():
        try:
            new_data = fetch_external_data()

            with data_lock:
                shared_data.update(new_data)

            time.sleep(10)  # every 10 seconds
        except Exception as e:
            direct_logger.error(f"Data collection failed: {e}")
            time.sleep(30)  # wait longer after an error

@app.action("get_current_data")
def get_current_data():
    with data_lock:
        current_data = shared_data.copy()

    return response.send(current_data)

if __name__ == "__main__":
    app.run(service="data_collector_service")
