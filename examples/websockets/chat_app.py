# WebSocket guide, "Complete Example" (rebuilt from its description): a chat server
# with rooms. "register" stores the user and lists the rooms; "join_room" creates the room
# if needed, tells the members already there ("room_update") and returns the member count
# and the recent history; "chat_message" checks membership and sends "new_message" to the
# other members; on disconnect the user leaves its rooms and their members are told.
# GET /api/rooms lists the rooms. Plain handlers run in worker threads, side by side, so
# the locks are needed (in daebus 0.0.31 every handler ran on the event loop).
# Run: python examples/websockets/chat_app.py    then: curl localhost:8080/api/rooms

import threading
import time

from daebus import Daebus, DaebusHttp, DaebusWebSocket, direct_logger, response

app = Daebus(__name__)

http = DaebusHttp(port=8080)
websocket = DaebusWebSocket()
app.attach(http)
app.attach(websocket)

rooms = {}
rooms_lock = threading.Lock()
users = {}
users_lock = threading.Lock()


def username_of(client_id):
    with users_lock:
        return users.get(client_id, {}).get("username", "Anonymous")


@app.socket_connect()
def on_connect(data, client_id):
    direct_logger.info(f"Client connected: {client_id}")
    return {"status": "connected", "client_id": client_id}


@app.socket_disconnect()
def on_disconnect(data, client_id):
    username = username_of(client_id)
    with rooms_lock:
        left = []
        for room_name, room in rooms.items():
            if client_id in room["members"]:
                room["members"].discard(client_id)
                left.append((room_name, list(room["members"])))
    for room_name, members in left:
        if members:
            app.websocket.broadcast_to_clients(
                members,
                {"user": username, "action": "left", "room": room_name},
                message_type="room_update",
            )
    with users_lock:
        users.pop(client_id, None)
    direct_logger.info(f"Client disconnected: {client_id}")


@app.socket("register")
def register_user(data, client_id):
    username = data.get("username")
    if not username:
        return {"error": "Username is required", "status": "error"}

    with users_lock:
        users[client_id] = {"username": username, "registered_at": time.time(), "rooms": []}
    with rooms_lock:
        available = list(rooms.keys())

    direct_logger.info(f"User registered: {username} ({client_id})")
    return {"status": "registered", "username": username, "available_rooms": available}


@app.socket("join_room")
def join_room(data, client_id):
    room_name = data.get("room")
    if not room_name:
        return {"error": "Room name is required", "status": "error"}

    username = username_of(client_id)
    with rooms_lock:
        if room_name not in rooms:
            rooms[room_name] = {
                "created_at": time.time(),
                "created_by": client_id,
                "members": set(),
                "messages": [],
            }
            direct_logger.info(f"Room created: {room_name} by {username}")
        room = rooms[room_name]
        others = list(room["members"] - {client_id})
        room["members"].add(client_id)
        members = len(room["members"])
        history = room["messages"][-20:]

    with users_lock:
        if client_id in users and room_name not in users[client_id]["rooms"]:
            users[client_id]["rooms"].append(room_name)

    if others:
        app.websocket.broadcast_to_clients(
            others,
            {"user": username, "action": "joined", "room": room_name},
            message_type="room_update",
        )

    return {"status": "joined", "room": room_name, "members": members, "history": history}


@app.socket("chat_message")
def send_message(data, client_id):
    room_name = data.get("room")
    text = data.get("message", "").strip()
    if not room_name or not text:
        return {"error": "Room and message are required", "status": "error"}

    msg = {
        "id": f"msg_{time.time()}_{client_id[:8]}",
        "room": room_name,
        "sender": username_of(client_id),
        "text": text,
        "timestamp": time.time(),
    }
    with rooms_lock:
        if room_name not in rooms:
            return {"error": "Room does not exist", "status": "error"}
        room = rooms[room_name]
        if client_id not in room["members"]:
            return {"error": "Not a member of this room", "status": "error"}
        room["messages"] = (room["messages"] + [msg])[-100:]
        recipients = list(room["members"] - {client_id})

    if recipients:
        app.websocket.broadcast_to_clients(recipients, msg, message_type="new_message")

    return {"status": "sent", "message_id": msg["id"], "timestamp": msg["timestamp"]}


@app.route("/api/rooms")
def get_rooms(req):
    with rooms_lock:
        room_info = [
            {
                "name": name,
                "members": len(room["members"]),
                "message_count": len(room["messages"]),
                "created_at": room["created_at"],
            }
            for name, room in rooms.items()
        ]
    return response.send({"count": len(room_info), "rooms": room_info}, 200)


if __name__ == "__main__":
    app.run(service="chat_service")
