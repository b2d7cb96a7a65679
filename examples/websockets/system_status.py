# WebSocket guide, "Broadcasting to All Clients" (rebuilt from its description): a
# background job sends system metrics to every client each minute; broadcast_to_all
# returns how many clients it reached.
# Run: python examples/websockets/system_status.py

import os
import time

from daebus import Daebus, DaebusHttp, DaebusWebSocket, direct_logger

app = Daebus(__name__)
app.attach(DaebusHttp(port=8080))
app.attach(DaebusWebSocket())

user_sessions = {}


def get_cpu_usage():  # stand-in for the document's helper
    return os.getloadavg()[0]


def get_memory_usage():  # stand-in for the document's helper
    return 42.0


@app.background("system_status", 60)
def broadcast_status():
    try:
        metrics = {
            "cpu": get_cpu_usage(),
            "memory": get_memory_usage(),
            "active_users": len(user_sessions),
            "timestamp": time.time(),
        }
        recipients = app.websocket.broadcast_to_all(metrics, message_type="system_status")
        direct_logger.info(f"Status broadcast sent to {recipients} clients")
    except Exception as e:
        direct_logger.error(f"Error broadcasting status: {e}")


if __name__ == "__main__":
    app.run(service="status_broadcaster")
