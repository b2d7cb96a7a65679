# WebSocket guide, "Handling Message Types" (rebuilt from its description): a chat
# message is broadcast to every client as "chat_update" (the sender too), and the
# sender gets an acknowledgement as the handler's return value.
# Run: python examples/websockets/chat_message.py

import time

from daebus import Daebus, DaebusHttp, DaebusWebSocket, logger

app = Daebus(__name__)
app.attach(DaebusHttp(port=8080))
app.attach(DaebusWebSocket())


@app.socket("chat_message")
def handle_chat(data, client_id):
    """Relay a chat message to everyone."""
    message = data.get("message", "")
    sender = data.get("sender", "Anonymous")

    logger.info(f"Chat message from {sender} ({client_id}): {message}")

    app.websocket.broadcast_to_all(
        {"sender": sender, "message": message, "timestamp": time.time()},
        message_type="chat_update",
    )

    return {"status": "delivered", "timestamp": time.time()}


if __name__ == "__main__":
    app.run(service="chat_service")
