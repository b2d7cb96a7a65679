# The Redis pub/sub how-to (004), "Basic Pub/Sub Commands" and the publishing side of
# "Python Pub/Sub Implementation" (RedisPublisher, EventBus.emit, both usage examples),
# the daebus way. Run event_bus.py first.
#
#   python examples/realtime_guide/publisher.py
#
# From a shell: `daebus publish notifications '"Hello, World!"'` prints the receiver
# count (redis-cli PUBLISH), `daebus listen notifications 'user:*'` prints what arrives
# (SUBSCRIBE and PSUBSCRIBE).

import sys
from pathlib import Path

from daebus import broadcast, subscriber_counts

sys.path.insert(0, str(Path(__file__).parent))
from event_bus import emit  # noqa: E402

# RedisPublisher.publish / publish_dict: any JSON value; returns the receiver count.
print(f"'Hello from publisher!' reached {broadcast.send('notifications', 'Hello from publisher!')}")
broadcast.send("notifications", "Another message!")
broadcast.send("notifications", {"text": "Hello, World!"})

# RedisPublisher.get_channel_subscribers
print(f"notifications has {subscriber_counts(['notifications'])['notifications']} subscriber(s)")

# EventBus.emit
emit("user.created", {"id": 123, "name": "John"})
emit("user.updated", {"id": 123, "name": "John Doe"})
emit("order.created", {"orderId": "ORD-123", "total": 99.99})
emit("order.shipped", {"orderId": "ORD-123", "carrier": "UPS"})
print("events emitted")
