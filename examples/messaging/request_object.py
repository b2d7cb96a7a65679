# Messaging guide, "The Request Object".
# The document shows a lone handler; it is completed into a service the way the guide's
# other examples are: the import line, `app = Daebus(__name__)` and the `app.run(...)`
# block are added (the service name is ours). The handler is the document's, unchanged.
# Note: `request.service` is the service the request was sent to (as in 0.0.31), not the
# sender the document's comment says.
# Run: python examples/messaging/request_object.py
# Lint: the document's code is kept as written (unused variables).

from daebus import Daebus, request, response

app = Daebus(__name__)

@app.action("process_data")
def process_data():
    # The full payload sent with the request
    payload = request.payload

    # Metadata about the request
    reply_to = request.reply_to       # Channel to send response to
    request_id = request.request_id   # Unique ID for this request
    service = request.service         # Source service name

    # Access specific fields from the payload
    user_id = payload.get("user_id")
    data_type = payload.get("type")

    # Process based on payload content
    return response.send({"processed": True})

if __name__ == "__main__":
    app.run(service="request_service")
