# WebSocket guide, "Client Registration" (rebuilt from its description): the client
# sends {"type": "register", "data": {"user": {"username": ...}}}; the handler stores the
# session, tells every client with a "user_update" broadcast and answers with a status.
# Run: python examples/websockets/register.py

import time

from daebus import Daebus, DaebusHttp, DaebusWebSocket, logger

app = Daebus(__name__)
app.attach(DaebusHttp(port=8080))
app.attach(DaebusWebSocket())

user_sessions = {}


@app.socket_register()
def on_register(data, client_id):
    user = data.get("user", {})
    username = user.get("username", f"Guest-{client_id[:8]}")

    user_sessions[client_id] = {
        "username": username,
        "registered_at": time.time(),
        "is_active": True,
    }
    logger.info(f"Client {client_id} registered as {username}")

    app.websocket.broadcast_to_all(
        {"user": username, "action": "joined"}, message_type="user_update"
    )

    return {"status": "registered", "username": username}


if __name__ == "__main__":
    app.run(service="register_service")
