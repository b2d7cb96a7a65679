# The Redis pub/sub guide (001), "Real-time Notification System", the daebus way:
# NotificationSystem is two functions that broadcast; UserNotificationClient is a small
# service that listens on its user's channel and on the broadcast channel.
#
#   python examples/pubsub_guide/notifications.py 1001        # the client of user 1001
#   python examples/pubsub_guide/notifications.py send        # the guide's usage example
#   daebus listen 'notifications:*'                            # watch them all go by
#
# These are live notifications: a client that is not running misses them. For
# notifications kept for later, see examples/realtime_guide/notifications.py.

import sys
import time
import uuid

from daebus import Daebus, broadcast


# NotificationSystem
def send_notification(user_id, notification):
    """Send a notification to one user, and a note of it to the monitoring channel."""
    message = {
        "id": str(uuid.uuid4()),
        "type": notification["type"],
        "title": notification["title"],
        "body": notification["body"],
        "timestamp": time.time(),
        "read": False,
    }
    broadcast.send(f"notifications:user:{user_id}", message)
    broadcast.send("notifications:all", {"user_id": user_id, "notification_id": message["id"]})
    return message["id"]


def broadcast_notification(notification):
    """Send a notification to every user."""
    return broadcast.send(
        "notifications:broadcast",
        {
            "id": str(uuid.uuid4()),
            "title": notification["title"],
            "body": notification["body"],
            "timestamp": time.time(),
        },
    )


# UserNotificationClient: a listener per channel, so no test of the channel is needed.
def user_notification_client(user_id):
    app = Daebus(__name__)

    @app.listen(f"notifications:user:{user_id}")
    def show_personal_notification(notification):
        print(f"[Personal] {notification['title']}: {notification['body']}")

    @app.listen("notifications:broadcast")
    def show_broadcast_notification(notification):
        print(f"[Broadcast] {notification['title']}: {notification['body']}")

    return app


if __name__ == "__main__":
    if sys.argv[1:] == ["send"]:
        send_notification(
            1001, {"type": "order", "title": "Order Update", "body": "Your order has been shipped"}
        )
        broadcast_notification(
            {
                "title": "System Maintenance",
                "body": "System will undergo maintenance at 10 PM tonight",
            }
        )
    else:
        user_id = sys.argv[1] if len(sys.argv) > 1 else "1001"
        user_notification_client(user_id).run(service=f"notifications-{user_id}")
