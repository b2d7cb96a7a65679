# Messaging guide, "Listening to Channels". Unchanged.
# Run: python examples/messaging/event_listener.py
# Lint: the document's code is kept as written (unused variables).

from daebus import Daebus, logger

app = Daebus(__name__)

@app.listen("system_events")
def handle_system_event(data):
    event_type = data.get("type")
    event_data = data.get("data", {})

    logger.info(f"Received system event: {event_type}")

    # Process different event types
    if event_type == "shutdown":
        # Handle shutdown notification
        pass
    elif event_type == "config_changed":
        # Reload configuration
        pass

# Run the service
if __name__ == "__main__":
    app.run(service="event_listener")
