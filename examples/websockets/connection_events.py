# WebSocket guide, "Connection Events" (rebuilt from its description): the connect
# handler answers right after the handshake; the disconnect handler cleans up the
# client's session. ("register" only stores a session here so that there is something
# to clean up; register.py is the guide's own register handler.)
# Run: python examples/websockets/connection_events.py

import time

from daebus import Daebus, DaebusHttp, DaebusWebSocket, logger

app = Daebus(__name__)
app.attach(DaebusHttp(port=8080))
app.attach(DaebusWebSocket())

user_sessions = {}


@app.socket_connect()
def on_connect(data, client_id):
    logger.info(f"Client {client_id} connected")
    return {"status": "connected", "client_id": client_id, "server_time": time.time()}


@app.socket_disconnect()
def on_disconnect(data, client_id):
    logger.info(f"Client {client_id} disconnected")
    if client_id in user_sessions:
        del user_sessions[client_id]


@app.socket_register()
def on_register(data, client_id):
    user_sessions[client_id] = {"registered_at": time.time()}
    return {"status": "registered"}


if __name__ == "__main__":
    app.run(service="events_service")
