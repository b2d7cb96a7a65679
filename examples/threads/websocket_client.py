# Threads guide, "Websocket Client" (rebuilt from its description). Needs
# websocket-client (`pip install websocket-client`; not a daebus dependency). The thread
# keeps a connection to a WebSocket feed open, reconnecting after it drops, and keeps the
# last 100 messages; "get_recent_messages" lists them and "send_websocket_message" sends
# on the connection. The guide's app has no `app.run(...)`; it is added (the service
# name is ours).
# Run: python examples/threads/websocket_client.py

import json
import threading
import time

import websocket

from daebus import Daebus, direct_logger, request, response


# stand-in for the document's get_api_key()
def get_api_key():
    return "demo-key"

app = Daebus(__name__)

received_messages = []
messages_lock = threading.Lock()
websocket_client = None

@app.thread("websocket_client")
def run_websocket_client(running):
    global websocket_client

    def on_message(ws, message):
        try:
            data = json.loads(message)
            with messages_lock:
                received_messages.append(data)
                # Keep the last 100
                if len(received_messages) > 100:
                    received_messages.pop(0)

            if data.get("type") == "alert":
                direct_logger.warning(f"Alert received: {data.get('message')}")
        except Exception as e:
            direct_logger.error(f"Bad WebSocket message: {e}")

    def on_error(ws, error):
        direct_logger.error(f"WebSocket error: {error}")

    def on_close(ws, close_status_code, close_msg):
        direct_logger.info("WebSocket connection closed")

    def on_open(ws):
        direct_logger.info("WebSocket connection open")
        ws.send(json.dumps({"type": "auth", "api_key": get_api_key()}))

    # Connect, and connect again whenever the connection drops, while the service runs
    while running():
        try:
            ws = websocket.WebSocketApp(
                "wss://api.example.com/stream",
                on_open=on_open,
                on_message=on_message,
                on_error=on_error,
                on_close=on_close,
            )
            websocket_client = ws

            ws.run_forever()  # returns when the connection closes

            if running():
                direct_logger.info("WebSocket disconnected; reconnecting in 5 seconds")
                time.sleep(5)
        except Exception as e:
            direct_logger.error(f"WebSocket connection failed: {e}")
            time.sleep(10)

    # The service is stopping
    if websocket_client:
        try:
            websocket_client.close()
        except Exception:
            pass
        websocket_client = None

@app.action("get_recent_messages")
def get_recent_messages():
    with messages_lock:
        messages = received_messages.copy()

    return response.send({"count": len(messages), "messages": messages})

@app.action("send_websocket_message")
def send_websocket_message():
    if not websocket_client:
        return response.error("WebSocket not connected")

    message = request.payload.get("message")
    if not message:
        return response.error("No message provided")

    try:
        websocket_client.send(json.dumps(message))
        return response.send({"sent": True})
    except Exception as e:
        return response.error(f"Failed to send message: {e}")

if __name__ == "__main__":
    app.run(service="websocket_client_service")
