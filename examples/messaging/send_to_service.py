# Messaging guide, "Direct Service Communication": a one-off script.
# Change: the document uses `time` without importing it (added below).
# It sends a "log_event" action to "logger_service" without waiting for a reply; the
# fields arrive in that handler's `request.payload`.
# Run: python examples/messaging/send_to_service.py

import time  # added: the document forgot this import

from daebus import DaebusCaller

# Create a caller
logger_service = DaebusCaller("logger_service")

# Send a direct message to an action
logger_service.send_to_service({
    "level": "info",
    "message": "System started successfully",
    "timestamp": time.time()
}, action="log_event")

# Clean up
logger_service.close()
