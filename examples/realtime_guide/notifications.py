# The Redis pub/sub how-to (004), "Real-Time Notification System" (NotificationService,
# its stored notifications, and the WebSocket integration), the daebus way: one service
# with actions, a WebSocket server, and listeners that bridge Redis to the browsers.
#
#   python examples/realtime_guide/notifications.py
#   # a browser or any WebSocket client: ws://localhost:5000/?user_id=user123
#   daebus call notifier send_to_user '{"user_id": "user123", "title": "Welcome!", "message": "Thanks for signing up!"}'
#   daebus call notifier broadcast '{"type": "warning", "title": "Maintenance", "message": "In 1 hour"}'
#   daebus call notifier get_notifications '{"user_id": "user123"}'
#
# Each notification is stored in the user's list in Redis (the last 100, as in the
# guide; `cache` is the service's redis-py client) and published on the user's channel.
# Every instance of the service relays what is published to its own WebSocket clients,
# so a user gets it whichever instance their browser is connected to, and any other
# program can notify a user by publishing on "notifications:user:<id>". (A message that
# must reach a service even when it is down goes on a durable channel instead: see
# examples/protean_broker/orders.py.) The service is "notifier", not "notifications":
# a service's name is also the channel its requests come on, and the guide's other
# examples publish on "notifications".

import json
import uuid
from datetime import datetime, timezone

from daebus import Daebus, DaebusWebSocket, broadcast, cache, request

HISTORY = 100  # notifications kept per user
BROADCAST_CHANNEL = "notifications:broadcast"

app = Daebus(__name__)
websocket = app.attach(DaebusWebSocket(port=5000))


def user_channel(user_id):
    return f"notifications:user:{user_id}"


def history_key(user_id):
    return f"user:{user_id}:notifications"


def new_notification(**fields):
    return {"id": str(uuid.uuid4()), "timestamp": datetime.now(timezone.utc).isoformat(), **fields}


@app.action("send_to_user")
def send_to_user():
    p = request.payload
    notification = new_notification(
        user_id=p["user_id"],
        type=p.get("type", "info"),
        title=p["title"],
        message=p["message"],
        read=False,
        data=p.get("data"),
    )
    key = history_key(p["user_id"])
    cache.lpush(key, json.dumps(notification))
    cache.ltrim(key, 0, HISTORY - 1)
    broadcast.send(user_channel(p["user_id"]), notification)
    return notification


@app.action("broadcast")
def broadcast_notification():
    p = request.payload
    notification = new_notification(
        type=p.get("type", "info"), title=p["title"], message=p["message"], data=p.get("data")
    )
    broadcast.send(BROADCAST_CHANNEL, notification)
    return {"id": notification["id"]}


@app.action("get_notifications")
def get_user_notifications():
    limit = request.payload.get("limit", 20)
    items = cache.lrange(history_key(request.payload["user_id"]), 0, limit - 1)
    return [json.loads(item) for item in items]


@app.action("mark_as_read")
def mark_as_read():
    key = history_key(request.payload["user_id"])
    for i, item in enumerate(cache.lrange(key, 0, -1)):
        notification = json.loads(item)
        if notification["id"] == request.payload["notification_id"]:
            notification["read"] = True
            cache.lset(key, i, json.dumps(notification))
            return {"marked": True}
    return {"marked": False}


# The WebSocket integration: a client says who it is in the URL (?user_id=...), like
# the guide's Socket.IO room "user_<id>". A real service would check a token here.
users = {}  # client id -> user id


@app.socket_connect()
def on_connect(data, client_id):
    if not data.get("user_id"):
        return False  # refused
    users[client_id] = data["user_id"]
    return {"user_id": data["user_id"]}


@app.socket_disconnect()
def on_disconnect(data, client_id):
    users.pop(client_id, None)


@app.listen("notifications:user:*")
def to_user(notification, channel):
    user_id = channel.removeprefix("notifications:user:")
    clients = [client_id for client_id, user in list(users.items()) if user == user_id]
    websocket.broadcast_to_clients(clients, notification, message_type="notification")


@app.listen(BROADCAST_CHANNEL)
def to_everyone(notification):
    websocket.broadcast_to_all(notification, message_type="notification")


if __name__ == "__main__":
    app.run(service="notifier")
