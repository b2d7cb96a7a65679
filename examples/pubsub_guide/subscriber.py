# The Redis pub/sub guide (001), "Quick Start: Basic Subscriber", "Pattern Subscription",
# "Multi-Channel Handling", "Message Filtering" and "Automatic Reconnection", the daebus
# way: one service whose listeners each take the channels they care about.
#
#   python examples/pubsub_guide/subscriber.py     # then, in another terminal:
#   python examples/pubsub_guide/publisher.py      # or: daebus publish news '{"title": "Hi"}'
#
# The guide's handler gets (channel, data) and tests the channel itself; a daebus
# listener is registered per channel or glob pattern, gets the decoded JSON, and the
# channel too if it takes a second argument. Messages are JSON-decoded for you.
# Reconnection is built in: when Redis restarts, the service reconnects and subscribes
# everything again. A listener that raises is logged; the others keep running.

from daebus import Daebus

app = Daebus(__name__)


# Basic Subscriber: one listener for two channels.
@app.listen("news")
@app.listen("updates")
def handle_message(data, channel):
    print(f"Received message from {channel}: {data}")


# Pattern Subscription: every channel starting with "user:".
@app.listen("user:*")
def pattern_handler(data, channel):
    print(f"Channel {channel}: {data}")


# Multi-Channel Handling: a listener per kind of channel instead of an if/elif on it.
@app.listen("orders")
def process_order(order_data):
    print(f"Processing order: {order_data['order_id']}")


@app.listen("payments")
def process_payment(payment_data):
    print(f"Processing payment: ${payment_data['amount']}")


@app.listen("notifications:*")
def send_notification(notification, channel):
    user_id = channel.split(":")[1]
    print(f"Sending notification to user {user_id}: {notification['message']}")


# Message Filtering: return early for what this listener ignores.
allowed_users = {1001, 1002}


@app.listen("important_events")
def filtered_handler(data):
    if data.get("priority") != "high":
        return  # not high priority
    if data.get("user_id") not in allowed_users:
        return  # not an allowed user
    print(f"Important event: {data['event']}")


# Batch Publishing: the guide's 1,000 messages on "bulk_updates". An async listener
# runs on the service's event loop, one at a time: no lock is needed for the counter.
bulk_received = 0


@app.listen("bulk_updates")
async def count_bulk_update(data):
    global bulk_received
    bulk_received += 1
    if bulk_received % 250 == 0:
        print(f"Received {bulk_received} bulk updates")


if __name__ == "__main__":
    app.run(service="news-reader")
