# The Redis pub/sub guide (001), "Request-Response Pattern" (usage) and "Message
# Acknowledgment" (publish_with_ack), the daebus way. Run processor.py first.
#
#   python examples/pubsub_guide/client.py
#
# `durable=True` (last part) goes further than the guide can with pub/sub: the request
# waits on the service's request stream while no instance of it runs, and is run once
# one starts, if that is within `ttl` seconds.

from daebus import CallTimeoutError, DaebusCaller, RemoteError

with DaebusCaller("processor", timeout=5) as client:
    # Request-Response
    response = client.send_request("calculate", {"action": "calculate", "data": [1, 2, 3, 4, 5]})
    print(f"Received response: {response}")

    # Message Acknowledgment: the reply is the ack.
    def publish_with_ack(message, timeout=5):
        try:
            ack = client.send_request("process", message, timeout=timeout)
        except RemoteError as e:
            print(f"Message not acknowledged: processing failed: {e}")
            return False
        except CallTimeoutError:
            print("Message not acknowledged in time")
            return False
        print(f"Message acknowledged: {ack}")
        return True

    publish_with_ack({"text": "Hello"})
    publish_with_ack({"no text": True})  # the handler raises: not acknowledged

    # A request that may wait up to a minute for the service to be (re)started.
    ack = client.send_request("process", {"text": "kept"}, durable=True, ttl=60, timeout=60)
    print(f"Durable request acknowledged: {ack}")
