# WebSocket guide, "Rate Limiting" (rebuilt from its description): at most 60 messages
# per client per minute, set before the component is attached. The 61st message within a
# minute is answered {"type": "error", "error": "Rate limit exceeded", "retry_after": 60}.
# (daebus 0.0.31 let only 59 through, and kept a client that kept sending locked out.)
# Run: python examples/websockets/rate_limiting.py

from daebus import Daebus, DaebusHttp, DaebusWebSocket

app = Daebus(__name__)
app.attach(DaebusHttp(port=8080))

websocket = DaebusWebSocket()
websocket.enable_rate_limiting(max_messages=60, window_seconds=60)
app.attach(websocket)


@app.socket("ping")
def handle_ping(data, client_id):
    return {"pong": True}


if __name__ == "__main__":
    app.run(service="rate_limited_service")
