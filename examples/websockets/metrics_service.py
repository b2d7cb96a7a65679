# Overview, "Example: Complete Service": copied unchanged. Added: the import of
# `logger`, which the listener uses without importing it (marked `# added`).
# HTTP on 8080, WebSocket on 8081 (the HTTP port + 1), pub/sub as metrics_service.
# Run: python examples/websockets/metrics_service.py
#      then: curl localhost:8080/api/metrics, and a WebSocket client on ws://localhost:8081

from daebus import Daebus, DaebusHttp, DaebusWebSocket, response, request, broadcast, direct_logger
from daebus import logger  # added
import time

# Create our application
app = Daebus(__name__)

# Add HTTP and WebSocket support
http = DaebusHttp(port=8080)
websocket = DaebusWebSocket()
app.attach(http)
app.attach(websocket)

# Track service metrics
metrics = {"start_time": time.time(), "requests": 0, "broadcasts": 0}


# Action handler for direct service communication
@app.action("get_metrics")
def handle_get_metrics():
    uptime = time.time() - metrics["start_time"]

    # Increment request counter
    metrics["requests"] += 1

    return response.send(
        {"uptime": uptime, "requests": metrics["requests"], "broadcasts": metrics["broadcasts"]}
    )


# Listen to broadcast messages
@app.listen("system_events")
def handle_system_event(data):
    event_type = data.get("type")
    logger.info(f"Received system event: {event_type}")

    # Process different event types
    if event_type == "maintenance_mode":
        # Update our status
        pass


# HTTP endpoint
@app.route("/api/metrics")
def http_get_metrics(req):
    uptime = time.time() - metrics["start_time"]

    return response.send(
        {"uptime": uptime, "requests": metrics["requests"], "broadcasts": metrics["broadcasts"]},
        200,
    )


# WebSocket message handler
@app.socket("subscribe_metrics")
def socket_subscribe_metrics(req, sid):
    # Register this client for metric updates
    # (implementation details omitted)

    return {"status": "subscribed", "update_interval": 10}


# Background task for metrics broadcast
@app.background("metrics_broadcast", 10)  # Every 10 seconds
def broadcast_metrics():
    try:
        # Prepare current metrics
        current_metrics = {
            "uptime": time.time() - metrics["start_time"],
            "requests": metrics["requests"],
            "broadcasts": metrics["broadcasts"] + 1,
            "timestamp": time.time(),
        }

        # Update counter
        metrics["broadcasts"] += 1

        # Broadcast to interested services
        broadcast.send("metrics_updates", current_metrics)

        # Also send to WebSocket clients
        websocket.broadcast_to_all(current_metrics, message_type="metrics_update")

        direct_logger.info("Metrics broadcast completed")
    except Exception as e:
        direct_logger.error(f"Error broadcasting metrics: {e}")


# Run the application
if __name__ == "__main__":
    app.run(service="metrics_service")
