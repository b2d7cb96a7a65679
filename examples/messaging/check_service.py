# Messaging guide, "Debugging Tips" 3: a one-off script. Unchanged.
# It calls the "get_status" action of "my_service" (debug_service.py runs one).
# Run: python examples/messaging/check_service.py

from daebus import DaebusCaller

caller = DaebusCaller("my_service")
response = caller.send_request("get_status", {})
print(f"Response: {response}")
caller.close()

