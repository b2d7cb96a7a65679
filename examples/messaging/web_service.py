# Messaging guide, "Broadcasting Messages". Unchanged.
# Run: python examples/messaging/web_service.py
# Lint: the document's code is kept as written (import order).

from daebus import Daebus, broadcast, logger
import time

app = Daebus(__name__)

@app.background("heartbeat", 60)  # Run every 60 seconds
def send_heartbeat():
    try:
        # Prepare heartbeat data
        heartbeat_data = {
            "type": "heartbeat",
            "service": "web_service",
            "timestamp": time.time(),
            "status": "operational"
        }

        # Broadcast to the monitoring channel
        recipients = broadcast.send("monitoring", heartbeat_data)
        logger.info(f"Heartbeat sent to {recipients} listeners")
    except Exception as e:
        logger.error(f"Failed to send heartbeat: {e}")

# Run the service
if __name__ == "__main__":
    app.run(service="web_service")
