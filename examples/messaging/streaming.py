# Messaging guide, "Streaming Responses".
# The document shows a lone handler; it is completed into a service the way the guide's
# other examples are: the import line, `app = Daebus(__name__)` and the `app.run(...)`
# block are added. The handler is the document's, unchanged: every
# `response.send(..., final=False)` reaches the caller's `on_progress`, and the last
# `response.send(...)` is what `send_request` returns.
# Run: python examples/messaging/streaming.py

from daebus import Daebus, request, response


# stand-in for the document's chunks(): successive slices of `size` items
def chunks(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]


# stand-in for the document's process_chunk(): nothing to do here
def process_chunk(chunk):
    pass


app = Daebus(__name__)

@app.action("process_large_dataset")
def process_large_dataset():
    dataset = request.payload.get("dataset", [])

    # Send initial response
    response.send({"status": "processing", "progress": 0}, final=False)

    # Process in chunks
    total_items = len(dataset)
    processed = 0

    for chunk in chunks(dataset, 100):
        # Process this chunk
        process_chunk(chunk)

        # Update progress
        processed += len(chunk)
        progress = (processed / total_items) * 100

        # Send progress update (non-final response)
        if processed < total_items:
            response.send({
                "status": "processing",
                "progress": progress
            }, final=False)

    # Send final response
    return response.send({
        "status": "complete",
        "progress": 100,
        "total_processed": processed
    })

if __name__ == "__main__":
    app.run(service="dataset_service")
