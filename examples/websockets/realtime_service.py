# WebSocket guide, "Setting Up WebSockets" (rebuilt from its description). HTTP on 8080
# and DaebusWebSocket() with no port: the WebSocket server listens on the HTTP port + 1,
# 8081. The start-up log announces both ports.
# Run: python examples/websockets/realtime_service.py    then connect to ws://localhost:8081

from daebus import Daebus, DaebusHttp, DaebusWebSocket

app = Daebus(__name__)

# HTTP first ...
http = DaebusHttp(port=8080)
app.attach(http)

# ... then WebSocket support: no port given, so it takes the HTTP port + 1
websocket = DaebusWebSocket()
app.attach(websocket)


@app.socket("ping")
def handle_ping(data, client_id):
    return {"pong": True}


if __name__ == "__main__":
    app.run(service="realtime_service")
