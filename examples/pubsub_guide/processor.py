# The Redis pub/sub guide (001), "Request-Response Pattern" and "Message Acknowledgment",
# the daebus way: the request processor is a service with actions; client.py calls them.
#
#   python examples/pubsub_guide/processor.py      # then: python examples/pubsub_guide/client.py
#   daebus call processor calculate '{"data": [1, 2, 3, 4, 5]}'
#
# The guide builds its own response channels, request ids, events and timeouts. Here a
# caller's `send_request` does all of it: the handler's return value is the response,
# an exception becomes an error reply (raised in the caller as `RemoteError`), and a
# service that is down or silent ends the call with `CallTimeoutError` at the timeout.
# Run this file twice and the two instances share the requests: each runs once.

from daebus import Daebus, request

app = Daebus(__name__)


@app.action("calculate")
def calculate():
    data = request.payload["data"]
    print(f"Processing request: {request.request_id}")
    return {"status": "success", "result": len(data)}


processed = []


def process_message(data):
    if "text" not in data:
        raise ValueError("a message needs a text")
    processed.append(data)


# The guide's publish_with_ack: the reply to a request is its acknowledgment. It comes
# once the handler has returned, so the caller knows the message was processed, not
# only delivered; a failure reaches the caller as an error reply, not as silence.
@app.action("process")
def handler_with_ack():
    process_message(request.payload)
    print(f"Processed: {request.payload['text']}")
    return {"status": "acknowledged", "processed": len(processed)}


if __name__ == "__main__":
    app.run(service="processor")
