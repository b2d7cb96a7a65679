# The Redis pub/sub guide (001), "Chat Room System", the daebus way: each member is a
# small service that listens on the room's channel, announces itself when it starts and
# leaves when it stops. Every member gets every message, its own included.
#
#   python examples/pubsub_guide/chat_room.py Alice           # terminal 1
#   python examples/pubsub_guide/chat_room.py Bob             # terminal 2
#   daebus call chat-Alice say '{"text": "Hello everyone!"}'   # Alice speaks
#   daebus call chat-Bob say '{"text": "Hi Alice!"}'
#
# Ctrl-C (or SIGTERM) makes a member leave: the others print "*** Bob left the chat ***".

import sys
import time

from daebus import Daebus, broadcast, request

USER = sys.argv[1] if len(sys.argv) > 1 else "Alice"
ROOM = sys.argv[2] if len(sys.argv) > 2 else "general"
CHANNEL = f"chat:room:{ROOM}"

app = Daebus(__name__)


@app.listen(CHANNEL)
def display_message(data):
    if data["type"] == "join":
        print(f"*** {data['user']} joined the chat ***")
    elif data["type"] == "message":
        print(f"{data['user']}: {data['text']}")
    elif data["type"] == "leave":
        print(f"*** {data['user']} left the chat ***")


@app.on_start
def join():
    broadcast.send(CHANNEL, {"type": "join", "user": USER, "timestamp": time.time()})


@app.action("say")
def send_message():
    """Returns how many members received the message (the sender counts)."""
    message = {"type": "message", "user": USER, "text": request.payload["text"]}
    return {"members": broadcast.send(CHANNEL, {**message, "timestamp": time.time()})}


@app.on_stop
def leave():
    broadcast.send(CHANNEL, {"type": "leave", "user": USER, "timestamp": time.time()})


if __name__ == "__main__":
    app.run(service=f"chat-{USER}")
