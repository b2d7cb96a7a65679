# WebSocket guide, "Port Configuration" (rebuilt from its description): without
# DaebusHttp the WebSocket port must be given; DaebusWebSocket() alone makes the service
# fail to start with "WebSocket port must be specified".
# Run: python examples/websockets/standalone.py    then connect to ws://localhost:8080

from daebus import Daebus, DaebusWebSocket

app = Daebus(__name__)

websocket = DaebusWebSocket(port=8080)
app.attach(websocket)


@app.socket("ping")
def handle_ping(data, client_id):
    return {"pong": True}


if __name__ == "__main__":
    app.run(service="standalone_ws_service")
