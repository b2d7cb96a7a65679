# The Redis pub/sub guide (001), "Quick Start: Basic Publisher", the publishes of
# "Pattern Subscription" and "Multi-Channel Handling", and "Batch Publishing", the
# daebus way: `broadcast.send` outside any service. Run subscriber.py first.
#
#   python examples/pubsub_guide/publisher.py
#
# `broadcast.send(channel, data)` encodes the data as JSON and returns how many
# subscribers received it (0: nobody listened, and the message is gone: see tasks.py for
# messages that must wait for their reader). `broadcast.send_many` sends a batch in one
# round trip, as the guide's pipeline does.

from daebus import broadcast

# Basic Publisher
message = {
    "type": "breaking_news",
    "title": "Important Update",
    "content": "Redis Toolkit new version released!",
    "timestamp": "2024-01-01 10:00:00",
}
receivers = broadcast.send("news", message)
print(f"Message sent to {receivers} subscriber(s)")

# Pattern Subscription: all of these reach the "user:*" listener.
broadcast.send("user:login", {"user_id": 1001})
broadcast.send("user:logout", {"user_id": 1002})
broadcast.send("user:update", {"user_id": 1003})

# Multi-Channel Handling
broadcast.send("orders", {"order_id": "ORD-1"})
broadcast.send("payments", {"amount": 42.5})
broadcast.send("notifications:1001", {"message": "Your order has shipped"})

# Message Filtering: only the first of these is printed by the subscriber.
broadcast.send("important_events", {"priority": "high", "user_id": 1001, "event": "disk full"})
broadcast.send("important_events", {"priority": "low", "user_id": 1001, "event": "ignored"})
broadcast.send("important_events", {"priority": "high", "user_id": 9999, "event": "ignored"})

# Batch Publishing: 1,000 messages in one round trip; a receiver count for each.
messages = [{"id": i, "data": f"Message {i}"} for i in range(1000)]
counts = broadcast.send_many([("bulk_updates", msg) for msg in messages])
print(f"Batch of {len(counts)} sent, {sum(counts)} deliveries")
