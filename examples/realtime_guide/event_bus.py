# The Redis pub/sub how-to (004), "Python Pub/Sub Implementation" (RedisSubscriber and
# EventBus with its "events:" prefix, and its usage example) and the Node.js version's
# usage, the daebus way: a service whose listeners are the subscriptions.
#
#   python examples/realtime_guide/event_bus.py      # then: python examples/realtime_guide/publisher.py
#   daebus call event-bus unsubscribe '{"channel": "events:user.*"}'
#
# What the guide's classes do by hand comes with a listener: a thread that reads the
# subscription, JSON decoding, several handlers per channel, a glob pattern with the
# actual channel as the second argument, an error in one handler that does not stop the
# others, reconnecting and subscribing again after Redis restarts. A message that is not
# JSON (the guide's 'Hello from publisher!') reaches the listener as the text itself.
# Publishers in other languages (the guide's Node.js ioredis one) publish the same JSON
# on the same channels: these listeners get their messages unchanged.

from datetime import datetime, timezone

from daebus import Daebus, broadcast, request

PREFIX = "events:"  # the EventBus's channel prefix: event "user.created" is "events:user.created"

app = Daebus(__name__)


# EventBus.emit: an event is {"type", "timestamp", "data"} on the prefixed channel.
def emit(event_type, data):
    event = {"type": event_type, "timestamp": datetime.now(timezone.utc).isoformat(), "data": data}
    return broadcast.send(f"{PREFIX}{event_type}", event)


# Example 1: Basic Pub/Sub. Two handlers of one channel: both run for every message.
@app.listen("notifications")
def message_handler(message, channel):
    print(f"Received on {channel}: {message}")


@app.listen("notifications")
def log_notification(message):
    print(f"Logged notification: {message}")


# Example 2: Event Bus. bus.on("user.created", ...) and bus.on_pattern("user.*", ...).
@app.listen(f"{PREFIX}user.created")
def on_user_created(event):
    print(f"User created: {event['data']}")


@app.listen(f"{PREFIX}user.*")
def on_any_user_event(event, channel):
    event_type = channel.removeprefix(PREFIX)
    print(f"User event '{event_type}': {event['data']}")


# The Node.js usage example: order events.
@app.listen(f"{PREFIX}order.created")
def on_order_created(event):
    print(f"Order created: {event['data']}")


@app.listen(f"{PREFIX}order.*")
def on_any_order_event(event, channel):
    print(f"Order event '{channel.removeprefix(PREFIX)}': {event['data']}")


# unsubscribe / punsubscribe while the service runs: the channel (or pattern) is
# unsubscribed with its last listener.
@app.action("unsubscribe")
def unsubscribe():
    return {"removed": app.remove_listener(request.payload["channel"])}


if __name__ == "__main__":
    app.run(service="event-bus")
