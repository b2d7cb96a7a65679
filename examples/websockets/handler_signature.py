# WebSocket guide, "Understanding Handler Signatures" (rebuilt from its description):
# a handler gets the client message's "data" field and the client's id (user_<uuid>).
#
#   client sends:      {"type": "chat_message", "data": {"message": "Hello!", "room": "general"}}
#   handler receives:  data = {"message": "Hello!", "room": "general"}, client_id = "user_..."
#
# Run: python examples/websockets/handler_signature.py

from daebus import Daebus, DaebusHttp, DaebusWebSocket, logger

app = Daebus(__name__)
app.attach(DaebusHttp(port=8080))
app.attach(DaebusWebSocket())


@app.socket("chat_message")
def handle_chat(data, client_id):
    message = data.get("message")
    room = data.get("room")
    logger.info(f"{client_id} says {message!r} in {room}")
    return {"room": room, "message": message, "from": client_id}


if __name__ == "__main__":
    app.run(service="signature_service")
