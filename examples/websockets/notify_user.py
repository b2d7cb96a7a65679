# WebSocket guide, "Send to a Specific Client" (rebuilt from its description): a
# pub/sub action pushes a "notification" to the client of a user, and tells its caller
# whether it was delivered. Clients say who they are with a "register" message.
# Run: python examples/websockets/notify_user.py
#      then: daebus call notification_service notify_user '{"user_id": "ada", "message": "hi"}'

import time

from daebus import Daebus, DaebusHttp, DaebusWebSocket, request, response

app = Daebus(__name__)
app.attach(DaebusHttp(port=8080))
app.attach(DaebusWebSocket())

clients_by_user = {}


@app.socket_register()
def on_register(data, client_id):
    clients_by_user[data.get("user_id")] = client_id
    return {"status": "registered"}


def find_client_for_user(user_id):  # stand-in for the document's helper
    client_id = clients_by_user.get(user_id)
    if client_id and app.websocket.is_client_connected(client_id):
        return client_id
    return None


@app.action("notify_user")
def send_notification():
    user_id = request.payload.get("user_id")
    message = request.payload.get("message")

    client_id = find_client_for_user(user_id)
    if not client_id:
        return response.error(f"User {user_id} not connected")

    success = app.websocket.send_to_client(
        client_id,
        {"message": message, "timestamp": time.time()},
        message_type="notification",
    )

    return response.send({"delivered": success, "client_id": client_id})


if __name__ == "__main__":
    app.run(service="notification_service")
