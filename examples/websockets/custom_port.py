# WebSocket guide, "Port Configuration" (rebuilt from its description): an explicit
# port is used as given, beside HTTP on 8080.
# Run: python examples/websockets/custom_port.py    then connect to ws://localhost:9000

from daebus import Daebus, DaebusHttp, DaebusWebSocket

app = Daebus(__name__)
app.attach(DaebusHttp(port=8080))

websocket = DaebusWebSocket(port=9000)
app.attach(websocket)


@app.socket("ping")
def handle_ping(data, client_id):
    return {"pong": True}


if __name__ == "__main__":
    app.run(service="custom_port_service")
