# Messaging guide, "Broadcasting Events": a one-off script.
# Change: the document uses `time` without importing it (added below).
# Outside a running service, `broadcast` publishes on the Redis server that
# DAEBUS_REDIS_URL (or the default) names.
# Run: python examples/messaging/broadcast_events.py

import time  # added: the document forgot this import

from daebus import broadcast

# Broadcast to a topic channel
broadcast.send("user_events", {
    "type": "user_registered",
    "user_id": "user123",
    "timestamp": time.time()
})
