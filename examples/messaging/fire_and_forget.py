# Messaging guide, "Fire-and-Forget Messages": a one-off script. Unchanged.
# "record_metric" is an action of "metrics_service", not a channel anyone listens on:
# when nobody listens on the channel given to send_message and the name is an action of
# the caller's target service, the message is delivered to that action.
# Run: python examples/messaging/fire_and_forget.py

from daebus import DaebusCaller

metrics = DaebusCaller("metrics_service")

# Send a metric without waiting for a response
metrics.send_message("record_metric", {
    "name": "api_request",
    "value": 1,
    "tags": {"endpoint": "/users", "method": "GET"}
})

metrics.close()
