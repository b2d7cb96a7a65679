# Protean's Redis PubSub broker guide (003), "Subscribing to Channels", "Use Cases" 1-3
# (notifications, cache invalidation, metrics) and "Channel Naming" pattern
# subscriptions, the daebus way: the subscriber classes are listeners of one service.
# publishers.py sends what they receive.
#
#   python examples/protean_broker/subscribers.py      # run it twice to see the difference:
#   python examples/protean_broker/publishers.py       # each instance clears its cache,
#                                                      # each metric is collected once
#
# Protean's `@handle("notification")` picks messages by their "type"; a daebus listener
# gets every message of its channel and tests the type itself. Whether every instance of
# the service gets a message, or the instances share them, is said per listener:
# invalidating a cache must happen on every instance (the default), while a metric must
# be counted once (`shared=True`: each message is handled by one instance).

import logging
import threading

from daebus import Daebus

app = Daebus(__name__)
logger = logging.getLogger(__name__)


# Notifications: the guide's "user:notifications" stream, and the per-user channels of
# its NotificationService ("user:123:notifications", a glob pattern).
def push_to_device(user_id, title, body):  # stand-in for the guide's push_service.send
    print(f"Push to user {user_id}: {title}: {body}")


@app.listen("user:notifications")
@app.listen("user:*:notifications")
def send_push_notification(message):
    if message.get("type") == "notification":
        push_to_device(message["user_id"], message["title"], message["body"])


# Cache invalidation: every instance holds its own cache, so every instance listens.
local_cache = {"user:42": {"name": "Ada"}, "user:7": {"name": "Grace"}}


@app.listen("cache:invalidation")
def clear_cache(message):
    if message.get("type") == "invalidate":
        cache_key = message["key"]
        local_cache.pop(cache_key, None)
        print(f"Invalidated cache key: {cache_key}")


# Metrics: "metrics:*" from every service, each metric collected by one instance.
collected = []  # stand-in for the guide's statsd.gauge
collected_lock = threading.Lock()


@app.listen("metrics:*", shared=True)
def collect_metric(message, channel):
    if message.get("type") == "metric":
        with collected_lock:
            collected.append((message["name"], message["value"], message.get("tags", {})))
        print(f"Metric from {channel}: {message['name']} = {message['value']}")


if __name__ == "__main__":
    app.run(service="app-events")
