# Overview, "Key Components": the pub/sub ones (action handler, channel
# listener, background task). The document shows each as a lone handler; they are
# completed into one service the way the overview's complete example combines them: the
# import line, `app = Daebus(__name__)` and the `app.run(...)` block are added (the
# service name is ours). The handlers are the document's, unchanged.
# The HTTP endpoint, the WebSocket handler and the overview's complete example
# (HTTP + WebSocket + pub/sub) come with the HTTP/WebSocket examples.
# Run: python examples/overview/key_components.py
# Lint: the document's code is kept as written (unused variables).

from daebus import Daebus, direct_logger, request, response

app = Daebus(__name__)

# Action Handlers
@app.action("get_status")
def handle_status_request():
    # Access the request payload
    data = request.payload

    # Process the request
    result = {
        "status": "healthy",
        "uptime": 3600
    }

    # Return a response
    return response.send(result)

# Channel Listeners
@app.listen("system_events")
def handle_system_event(data):
    event_type = data.get("type")

    if event_type == "shutdown":
        # Handle shutdown event
        pass

# Background Tasks
@app.background("cleanup", 3600)  # Run hourly
def cleanup_old_data():
    # Delete old records
    direct_logger.info("Cleanup completed")

if __name__ == "__main__":
    app.run(service="overview_service")
