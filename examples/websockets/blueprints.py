# WebSocket guide, "Organizing with Blueprints" (rebuilt from its description): a chat
# blueprint with two socket types and a users blueprint with the connect handler,
# registered after DaebusHttp and DaebusWebSocket are attached. (The order no longer
# matters: daebus 0.0.31 dropped socket handlers of blueprints registered before the
# WebSocket component was attached.)
# Run: python examples/websockets/blueprints.py

from daebus import Blueprint, Daebus, DaebusHttp, DaebusWebSocket

chat_rooms = {}

chat_bp = Blueprint("chat")


@chat_bp.socket("send_message")
def handle_chat_message(data, client_id):
    room = data.get("room", "general")
    chat_rooms.setdefault(room, []).append({"from": client_id, "text": data.get("text")})
    return {"received": True, "room": room}


@chat_bp.socket("join_room")
def handle_join_room(data, client_id):
    room = data.get("room", "general")
    chat_rooms.setdefault(room, [])
    return {"joined": True, "room": room}


user_bp = Blueprint("users")


@user_bp.socket_connect()
def handle_connect(data, client_id):
    return {"welcome": True, "client_id": client_id}


app = Daebus(__name__)
http = DaebusHttp(port=8080)
websocket = DaebusWebSocket()

app.attach(http)
app.attach(websocket)

app.register_blueprint(chat_bp)
app.register_blueprint(user_bp)

if __name__ == "__main__":
    app.run(service="chat_service")
