# WebSocket guide, "Port Conflicts" (rebuilt from its description): the same port given
# to HTTP and WebSocket. The WebSocket server moves to the HTTP port + 1 (8081) and says
# so in a warning.
# Run: python examples/websockets/same_port.py

from daebus import Daebus, DaebusHttp, DaebusWebSocket

app = Daebus(__name__)
app.attach(DaebusHttp(port=8080))
websocket = DaebusWebSocket(port=8080)
app.attach(websocket)

print(f"WebSocket server will listen on port {websocket.get_websocket_port()}")


@app.socket("ping")
def handle_ping(data, client_id):
    return {"pong": True}


if __name__ == "__main__":
    app.run(service="same_port_service")
