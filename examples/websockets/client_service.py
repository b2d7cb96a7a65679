# WebSocket guide, "Client-Side Implementation" (rebuilt from its description): the
# service that client.html, the guide's JavaScript client, talks to. The client registers,
# sends "chat_message", and shows what comes back by its type: "chat_update" (a chat
# message, to everyone), "notification" (sent by the pub/sub action notify) and
# "system_status" (the 60 s job).
# Run: python examples/websockets/client_service.py    then open http://localhost:8080/
# (the service serves client.html itself: the WebSocket server lets in browser pages of
# its own host only, and a page opened as a file is not one; see allowed_origins)

import time
from pathlib import Path

from aiohttp import web

from daebus import Daebus, DaebusHttp, DaebusWebSocket, direct_logger, request, response

app = Daebus(__name__)
app.attach(DaebusHttp(port=8080))
app.attach(DaebusWebSocket())

user_sessions = {}


@app.route("/")  # added: the page, from this service
def client_page(req):
    page = Path(__file__).with_name("client.html").read_text(encoding="utf-8")
    return web.Response(text=page, content_type="text/html")


@app.socket_register()
def on_register(data, client_id):
    username = data.get("user", {}).get("username", f"Guest-{client_id[:8]}")
    user_sessions[client_id] = {"username": username, "registered_at": time.time()}
    return {"status": "registered", "username": username}


@app.socket("chat_message")
def handle_chat(data, client_id):
    app.websocket.broadcast_to_all(
        {"sender": data.get("sender", "Anonymous"), "message": data.get("message", "")},
        message_type="chat_update",
    )
    return {"status": "delivered"}


@app.action("notify")
def notify():
    username = request.payload.get("username")
    for client_id, session in list(user_sessions.items()):
        if session["username"] == username:
            sent = app.websocket.send_to_client(
                client_id, {"message": request.payload.get("message")}, message_type="notification"
            )
            return response.send({"delivered": sent})
    return response.error(f"User {username} not connected")


@app.background("system_status", 60)
def broadcast_status():
    recipients = app.websocket.broadcast_to_all(
        {"active_users": len(user_sessions), "timestamp": time.time()},
        message_type="system_status",
    )
    direct_logger.info(f"Status broadcast sent to {recipients} clients")


if __name__ == "__main__":
    app.run(service="client_service")
