# Messaging guide, "Defining Action Handlers". Unchanged.
# Run: python examples/messaging/system_monitor.py
# Lint: the document's code is kept as written (import order).

from daebus import Daebus, request, response, logger

app = Daebus(__name__)

@app.action("get_status")
def handle_status_request():
    # Access the request payload
    payload = request.payload
    logger.info(f"Received status request: {payload}")

    # Process the request
    result = {
        "status": "healthy",
        "uptime": 3600,
        "memory_usage": "128MB"
    }

    # Return a response (automatically sent back to requester)
    return response.send(result)

# Run the service
if __name__ == "__main__":
    app.run(service="system_monitor")
