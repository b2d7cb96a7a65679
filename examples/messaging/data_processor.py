# Messaging guide, "Complete Example". Unchanged.
# Run: python examples/messaging/data_processor.py
# Lint: the document's code is kept as written (import order).

from daebus import Daebus, request, response, broadcast, logger, direct_logger
import time
import random

app = Daebus(__name__)

# Service health status
service_status = {
    "status": "healthy",
    "start_time": time.time(),
    "request_count": 0
}

# Action handler for status request
@app.action("get_status")
def handle_status_request():
    service_status["request_count"] += 1

    uptime = time.time() - service_status["start_time"]

    return response.send({
        "status": service_status["status"],
        "uptime": uptime,
        "requests_handled": service_status["request_count"]
    })

# Action handler for data processing
@app.action("process_data")
def handle_process_data():
    data = request.payload.get("data", [])

    if not data:
        return response.error("No data provided")

    try:
        # Simple processing example
        result = sum(data)

        # Log the operation
        logger.info(f"Processed {len(data)} data points, result: {result}")

        # Return the result
        return response.send({
            "input_size": len(data),
            "result": result,
            "timestamp": time.time()
        })
    except Exception as e:
        logger.error(f"Data processing error: {e}")
        return response.error(f"Processing failed: {e}")

# Listener for system events
@app.listen("system_events")
def handle_system_event(data):
    event_type = data.get("type")
    logger.info(f"Received system event: {event_type}")

    if event_type == "shutdown_request":
        # Set status to shutting down
        service_status["status"] = "shutting_down"

        # Broadcast our new status
        broadcast.send("service_status", {
            "service": "data_processor",
            "status": "shutting_down",
            "timestamp": time.time()
        })

# Background task for regular status updates
@app.background("status_reporter", 60)  # Run every minute
def report_status():
    try:
        # Generate random load metrics for demonstration
        cpu_load = random.uniform(0.1, 0.9)
        memory_usage = random.uniform(100, 500)

        # Broadcast status to the monitoring channel
        broadcast.send("monitoring", {
            "service": "data_processor",
            "status": service_status["status"],
            "metrics": {
                "cpu": cpu_load,
                "memory_mb": memory_usage,
                "uptime": time.time() - service_status["start_time"],
                "requests": service_status["request_count"]
            },
            "timestamp": time.time()
        })

        direct_logger.info(f"Status report sent: CPU {cpu_load:.2f}, Memory {memory_usage:.2f}MB")
    except Exception as e:
        direct_logger.error(f"Failed to send status report: {e}")

# Run the service
if __name__ == "__main__":
    app.run(service="data_processor")
