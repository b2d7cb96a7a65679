# Protean's Redis PubSub broker guide (003), "Simple Consumer Groups", "Position
# Tracking", "Message Processing", "No Acknowledgment Support", "Limited Persistence" and
# "Migration Strategies: To Redis Streams", the daebus way: durable channels.
#
#   python examples/protean_broker/orders.py              # the service; run it twice to share
#   python examples/protean_broker/orders.py place 5      # place 5 orders (service up or not)
#   daebus stats orders                                   # per group: pending, lag, dead letters
#   daebus dlq list orders --group group1                 # the orders a group gave up on
#
# `broadcast.send(channel, message, durable=True)` appends the message to the channel's
# Redis stream (kept to its last `maxlen`, the guide's MAXLEN) and returns its id.
# Each `@app.listen(channel, durable=True, group=...)` reads the stream as a consumer
# group: every group gets every message and keeps its own position in Redis, across
# restarts of the service; the instances of the service share each group's messages.
# A group that did not exist yet starts at `start`: "earliest" gets everything the
# stream holds (the backlog), "latest" (the default) only what is sent from then on.
# Without `group=`, the group is the service's name: two services, two groups.
#
# The guide's missing acknowledgments: a message is acknowledged when its handler
# returns. One that raises is tried again `retries` times, `backoff` seconds apart at
# first (doubling), then kept as a dead letter with its error (`daebus dlq`). One held
# by an instance that died is taken over by another. `request.message_id` and
# `request.delivery_count` help a handler do each order only once.

import sys

from daebus import Daebus, broadcast, request

app = Daebus(__name__)


def place_order(order_id, amount, customer_id="c1"):
    """Publish an "order.created" event; returns its id in the stream."""
    message = {
        "type": "order.created",
        "order_id": order_id,
        "amount": amount,
        "customer_id": customer_id,
    }
    return broadcast.send("orders", message, durable=True, maxlen=10_000)


def check(order):
    if order["amount"] <= 0:
        raise ValueError(f"order {order['order_id']} has no amount")


# Group 1 handles the orders one at a time, in the order they were placed (the guide:
# "Messages are processed sequentially per consumer group").
@app.listen(
    "orders", durable=True, group="group1", start="earliest", ordered=True, retries=2, backoff=0.5
)
def process_group1(msg):
    if msg["type"] == "order.created":
        check(msg)
        print(f"Group 1 processing order {msg['order_id']} (message {request.message_id})")


# Group 2 gets the same orders, at its own pace, several at once, shared between the
# instances of the service.
@app.listen("orders", durable=True, group="group2", start="earliest", retries=2, backoff=0.5)
def process_group2(msg):
    if msg["type"] == "order.created":
        check(msg)
        print(f"Group 2 processing order {msg['order_id']} (try {request.delivery_count})")


if __name__ == "__main__":
    if sys.argv[1:2] == ["place"]:
        count = int(sys.argv[2]) if len(sys.argv) > 2 else 1
        for n in range(1, count + 1):
            print(f"order {n}: message {place_order(n, amount=10 * n)}")
    else:
        app.run(service="orders")
