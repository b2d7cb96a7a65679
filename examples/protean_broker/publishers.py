# Protean's Redis PubSub broker guide (003), "Basic Publishing", "Use Cases" 1-3 and
# "Monitor Subscriber Count", the daebus way: functions that call `broadcast.send`.
# Run subscribers.py first.
#
#   python examples/protean_broker/publishers.py
#
# The guide's `domain.brokers['notifications'].publish(stream=..., message=...)` is
# `broadcast.send(channel, message)`, which returns how many subscribers received it:
# 0 means nobody heard it, which is what the guide's ensure_subscribers checks before
# sending. Live messages like these are lost when nobody listens; orders.py shows
# messages that are kept (Redis Streams, consumer groups, acknowledgments).

from daebus import broadcast, subscriber_counts


# Basic Publishing
def publish_notification():
    return broadcast.send(
        "user:notifications",
        {
            "type": "notification",
            "user_id": "123",
            "title": "New Message",
            "body": "You have a new message!",
        },
    )


# 1. Real-time Notifications
def notify_user(user_id, notification):
    return broadcast.send(
        f"user:{user_id}:notifications",
        {"type": "notification", "user_id": user_id, **notification},
    )


def get_followers(user_id):  # stand-in for the guide's helper
    return ["7", "8", "9"]


def notify_followers(user_id, update):
    # One round trip for all the followers.
    messages = [
        (
            f"user:{follower_id}:notifications",
            {"type": "notification", "user_id": follower_id, **update},
        )
        for follower_id in get_followers(user_id)
    ]
    return broadcast.send_many(messages)


# 2. Cache Invalidation
def update_user_profile(user_id, data):
    # ... update the database, then tell every instance of every service:
    return broadcast.send("cache:invalidation", {"type": "invalidate", "key": f"user:{user_id}"})


# 3. Metrics and Monitoring
def track_api_latency(endpoint, duration):
    return broadcast.send(
        "metrics:api",
        {
            "type": "metric",
            "name": "api.latency",
            "value": duration,
            "tags": {"endpoint": endpoint},
        },
    )


# Monitor Subscriber Count: how many connections subscribe to the channel by name
# (a listener of a glob pattern is not counted here).
def ensure_subscribers(channel, min_subscribers=1):
    subscriber_count = subscriber_counts([channel])[channel]
    if subscriber_count < min_subscribers:
        print(
            f"Only {subscriber_count} subscribers for {channel}, expected at least {min_subscribers}"
        )
        return False
    return True


if __name__ == "__main__":
    if ensure_subscribers("user:notifications"):
        print(f"notification: {publish_notification()} receiver(s)")
    print(f"notify_user: {notify_user('123', {'title': 'Hi', 'body': 'Welcome back'})} receiver(s)")
    print(
        f"notify_followers: {notify_followers('123', {'title': 'New post', 'body': 'Ada posted'})}"
    )
    print(f"cache invalidation: {update_user_profile('42', {'name': 'Ada L.'})} receiver(s)")
    print(f"metric: {track_api_latency('/users', 0.042)} receiver(s)")
