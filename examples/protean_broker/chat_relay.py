# Protean's Redis PubSub broker guide (003), "Message Distribution": a ChatRoom that
# publishes, and a ChatSubscriber on "chat:*" that relays to WebSocket clients, the
# daebus way: one service with a WebSocket server and a pattern listener.
#
#   python examples/protean_broker/chat_relay.py
#   # a browser or any WebSocket client: ws://localhost:8081/?room=general
#   #   sends {"type": "chat", "data": {"user_id": "ada", "message": "Hi"}}
#   daebus publish chat:general '{"type": "chat.message", "user_id": "bot", "message": "Hello"}'
#
# A client's message is published on Redis rather than sent to the other clients
# directly, so that with several instances of this service (behind a load balancer)
# every instance relays it to its own clients: the listener is not shared, each
# instance gets every message. Any other program can talk to the room by publishing on
# its channel.

from datetime import datetime, timezone

from daebus import Daebus, DaebusWebSocket, broadcast

app = Daebus(__name__)
websocket = app.attach(DaebusWebSocket(port=8081))

rooms = {}  # client id -> room


@app.socket_connect()
def on_connect(data, client_id):
    room = data.get("room", "general")
    rooms[client_id] = room
    return {"room": room}


@app.socket_disconnect()
def on_disconnect(data, client_id):
    rooms.pop(client_id, None)


# ChatRoom.send_message: a client's message goes to the room's channel.
@app.socket("chat")
def send_message(data, client_id):
    room = rooms[client_id]
    receivers = broadcast.send(
        f"chat:{room}",
        {
            "type": "chat.message",
            "user_id": data["user_id"],
            "message": data["message"],
            "timestamp": datetime.now(timezone.utc).isoformat(),
        },
    )
    return {"sent": True, "relays": receivers}


# ChatSubscriber.relay_to_websocket: every message of every room, to that room's clients.
@app.listen("chat:*")
def relay_to_websocket(message, channel):
    room = channel.split(":", 1)[1]
    members = [client_id for client_id, joined in list(rooms.items()) if joined == room]
    websocket.broadcast_to_clients(members, message, message_type="chat.message")


if __name__ == "__main__":
    app.run(service="chat-relay")
