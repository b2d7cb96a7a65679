# Messaging guide, "Using Blueprints for Organization".
# Change: the document uses `request` without importing it (added below).
# As in the document, `app.run(...)` is called at module level (no __main__ guard), so
# this file is meant to be run, not imported.
# Run: python examples/messaging/blueprint_service.py
# Lint: the document's code is kept as written (import order).

from daebus import Daebus, Blueprint, response
from daebus import request  # added: the document forgot this import

# Create a blueprint for user-related functionality
user_bp = Blueprint("users")

@user_bp.action("get_user")
def get_user():
    user_id = request.payload.get("id")
    # Fetch and return user
    return response.send({"id": user_id, "name": "Example User"})

@user_bp.listen("user_events")
def on_user_event(data):
    # Handle user events
    pass

# Create the app and register the blueprint
app = Daebus(__name__)
app.register_blueprint(user_bp)

# Run the service
app.run(service="user_service")
