# Getting-started guide, "Communicating with Your Service" (rebuilt from its
# description). Prints {'message': 'Hello, Daebus!'} then {'message': 'Hello, World!'}
# while hello_service.py runs.
# Run: python examples/getting_started/hello_client.py

from daebus import DaebusCaller

caller = DaebusCaller("hello-service")

try:
    # A named greeting
    result = caller.send_request("hello", {"name": "Daebus"})
    print(result)

    # No name: the service falls back to "World"
    result = caller.send_request("hello", {})
    print(result)
finally:
    # Release the caller's connections
    caller.close()
