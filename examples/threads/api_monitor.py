# Threads guide, "External API Monitor" (rebuilt from its description). Needs
# requests (`pip install requests`; not a daebus dependency). The thread checks each
# endpoint every 30 seconds; "get_api_status" answers with a copy of the results. The
# guide's app has no `app.run(...)`; it is added (the service name is ours).
# Run: python examples/threads/api_monitor.py

import threading
import time

import requests

from daebus import Daebus, direct_logger, response

app = Daebus(__name__)

# The endpoints to watch
endpoints = {
    "users_api": "https://api.example.com/users/health",
    "orders_api": "https://api.example.com/orders/health",
    "inventory_api": "https://api.example.com/inventory/health"
}

api_status = {}
status_lock = threading.Lock()

@app.thread("api_monitor")
def monitor_apis(running):
    while running():
        for api_name, url in endpoints.items():
            try:
                started = time.time()
                reply = requests.get(url, timeout=5)
                latency = time.time() - started

                status = {
                    "status": "up" if reply.status_code == 200 else "degraded",
                    "status_code": reply.status_code,
                    "latency_ms": round(latency * 1000, 2),
                    "checked_at": time.time()
                }
                if reply.status_code != 200:
                    direct_logger.warning(f"{api_name} answered {reply.status_code}")
            except Exception as e:
                status = {"status": "down", "error": str(e), "checked_at": time.time()}
                direct_logger.error(f"{api_name} is unreachable: {e}")

            with status_lock:
                api_status[api_name] = status

        time.sleep(30)  # next round in 30 seconds

@app.action("get_api_status")
def get_api_status():
    with status_lock:
        current_status = api_status.copy()

    return response.send(current_status)

if __name__ == "__main__":
    app.run(service="api_monitor_service")
