# The kiosk use case of the overview: one service serves a local browser
# page, pushes live data to it over a WebSocket and answers its HTTP calls, while it
# talks to the other services over Redis.
#
# Run:  python examples/kiosk/kiosk_service.py     then open http://localhost:8080/
#       daebus call kiosk announce '{"text": "Hello, kiosk"}'   (shows up on the page)
#
# The WebSocket is served on the HTTP port under /ws, so the page needs no second port.
import os
import time
from pathlib import Path

from daebus import Daebus, DaebusHttp, DaebusWebSocket, request

app = Daebus(__name__)
http = DaebusHttp(port=int(os.environ.get("KIOSK_PORT", "8080")), host="127.0.0.1")
websocket = DaebusWebSocket(path="/ws")
app.attach(http)
app.attach(websocket)
http.static("/", Path(__file__).parent / "static")

INTERVAL = float(os.environ.get("KIOSK_INTERVAL", "2"))  # seconds between pushes
metrics = {"start_time": time.time(), "requests": 0, "broadcasts": 0}


def current_metrics():
    return {
        "uptime": round(time.time() - metrics["start_time"], 1),
        "requests": metrics["requests"],
        "broadcasts": metrics["broadcasts"],
        "clients": websocket.get_client_count(),
    }


@app.route("/api/metrics")
def http_get_metrics(req):
    metrics["requests"] += 1
    return current_metrics()


@app.action("announce")
def announce():
    """Another service (or `daebus call`) puts a message on every screen."""
    text = str(request.payload.get("text", ""))
    return {"screens": websocket.broadcast_to_all({"text": text}, message_type="announcement")}


@app.socket("subscribe_metrics")
def subscribe_metrics(data, client_id):
    return {"status": "subscribed", "update_interval": INTERVAL}


@app.background("metrics_broadcast", INTERVAL)
def broadcast_metrics():
    metrics["broadcasts"] += 1
    websocket.broadcast_to_all(current_metrics(), message_type="metrics_update")


if __name__ == "__main__":
    app.run(service="kiosk")
