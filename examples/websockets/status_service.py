# WebSocket guide, "Example: HTTP and WebSocket together" (rebuilt from its
# description): HTTP on 5000, WebSocket on 5001. GET /api/status tells browsers where
# the WebSocket server is; the socket type "ping" answers {"pong": true}.
# status_client.html is the guide's JavaScript client for it.
# Run: python examples/websockets/status_service.py    then open http://localhost:5000/
# (the service serves status_client.html itself: the WebSocket server lets in browser
# pages of its own host only, and a page opened as a file is not one; see allowed_origins)

import time
from pathlib import Path

from aiohttp import web

from daebus import Daebus, DaebusHttp, DaebusWebSocket

app = Daebus(__name__)

http = DaebusHttp(port=5000)
app.attach(http)

websocket = DaebusWebSocket()
app.attach(websocket)

# The port is known as soon as the component is attached
print(f"HTTP on port {http.port}, WebSocket on port {app.websocket.get_websocket_port()}")


@app.route("/api/status")
def status(req):
    return {
        "status": "ok",
        "websocket_port": app.websocket.get_websocket_port(),
        "clients": app.websocket.get_client_count(),
    }


@app.route("/")  # added: the page, from this service
def status_page(req):
    page = Path(__file__).with_name("status_client.html").read_text(encoding="utf-8")
    return web.Response(text=page, content_type="text/html")


@app.socket("ping")
def handle_ping(data, client_id):
    return {"pong": True, "timestamp": time.time()}


if __name__ == "__main__":
    app.run(service="status_service")
