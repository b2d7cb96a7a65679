# Messaging guide, "Using DaebusCaller".
# Changes: the document uses `request` and `response` without importing them (added
# below), and it never runs the app, so the `app.run(...)` block is added (the service
# name is ours). The rest is the document's, unchanged.
# It calls "user_service" (create_user.py runs one) and "notification_service" (any
# service with a "send_email" action).
# Two things about the document's code, which works as written:
# - it closes the module-level callers in `finally` after every request; a closed
#   DaebusCaller reconnects by itself on its next call, so the next registration works;
# - `user_result.get("status") == "error"` never holds: an error reply makes
#   `send_request` raise, which lands in the `except` branch instead.
# Run: python examples/messaging/register_user.py
# Lint: the document's code is kept as written (unused import, import order).

from daebus import Daebus, DaebusCaller, logger
from daebus import request, response  # added: the document forgot this import

app = Daebus(__name__)

# Create a caller for the target service
user_service = DaebusCaller("user_service")
notification_service = DaebusCaller("notification_service")

@app.action("register_user")
def register_user():
    user_data = request.payload

    try:
        # Call the user service to create the user
        user_result = user_service.send_request("create_user", user_data)

        if user_result.get("status") == "error":
            return response.error(f"User creation failed: {user_result.get('error')}")

        # Send a welcome notification
        notification_result = notification_service.send_request("send_email", {
            "user_id": user_result["id"],
            "template": "welcome",
            "email": user_data.get("email")
        })

        # Return the combined result
        return response.send({
            "user": user_result,
            "notification": notification_result
        })
    except Exception as e:
        return response.error(f"Registration failed: {e}")
    finally:
        # Clean up resources
        user_service.close()
        notification_service.close()

if __name__ == "__main__":
    app.run(service="registration_service")
