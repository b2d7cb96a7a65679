# Task-scheduler guide, "Periodic Data Refresh" (rebuilt from its description). A job
# refreshes a module-level cache every 5 minutes and announces it on "data_events"; the
# "get_data" action answers from the cache. The guide's app has no `app.run(...)`; it is
# added (the service name is ours).
# Run: python examples/task_scheduler/data_refresh.py

import time

from daebus import Daebus, broadcast, direct_logger, response


# stand-in for the document's fetch_data_from_source()
def fetch_data_from_source():
    return {"temperature": 21.5, "humidity": 40}

app = Daebus(__name__)

# The cache, and when it was last filled
cached_data = {}
last_update = 0

@app.background("data_refresh", 300)  # every 5 minutes
def refresh_data():
    global cached_data, last_update

    try:
        cached_data = fetch_data_from_source()
        last_update = time.time()

        # Let interested services know
        broadcast.send("data_events", {
            "type": "data_refreshed",
            "timestamp": last_update
        })

        direct_logger.info("Data cache refreshed")
    except Exception as e:
        direct_logger.error(f"Data refresh failed: {e}")

@app.action("get_data")
def get_data():
    return response.send({
        "data": cached_data,
        "last_updated": last_update
    })

if __name__ == "__main__":
    app.run(service="data_service")
