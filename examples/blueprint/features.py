# Blueprint guide, "Basic Usage" and "Supported Features": the pub/sub snippets
# (rebuilt from their description), completed into one service: the guide shows each
# handler on its own, so the imports, the app, `register_blueprint(...)` and the
# `app.run(...)` block are added. HTTP routes and WebSocket handlers come with the
# HTTP/WebSocket examples.
# Run: python examples/blueprint/features.py

import time

from daebus import Blueprint, Daebus, direct_logger, request, response

# -- "Creating a Blueprint" / "Defining Handlers" --------------------------------------

users_bp = Blueprint("users")

# stand-in for the document's fetch_user()
def fetch_user(user_id):
    return {"id": user_id, "name": "Example User"}

@users_bp.action("get_user")
def get_user():
    user_id = request.payload.get("id")
    user = fetch_user(user_id)
    return response.send(user)

# -- "Supported Features" --------------------------------------------------------------

blueprint = Blueprint("features")

# Action handlers
@blueprint.action("create_user")
def create_user():
    return response.send({"created": True})

# Channel listeners
@blueprint.listen("user_events")
def handle_user_event(data):
    event_type = data.get("type")

    if event_type == "user_created":
        direct_logger.info(f"User created: {data.get('user_id')}")
    elif event_type == "user_updated":
        direct_logger.info(f"User updated: {data.get('user_id')}")

# Background tasks
@blueprint.background("cleanup_expired_users", 3600)  # hourly
def cleanup_expired_users():
    direct_logger.info("Expired users cleaned up")

# Background threads
@blueprint.thread("user_activity_monitor")
def monitor_user_activity(running):
    direct_logger.info("User activity monitor started")
    while running():
        time.sleep(1)  # look at user activity every second
    direct_logger.info("User activity monitor stopped")

# Startup handlers
@blueprint.on_start()
def initialize_user_cache():
    direct_logger.info("User cache initialized")

# -- "Error Handling" ------------------------------------------------------------------

# stand-in for the document's process_data(): reads a number from the payload
def process_data():
    return {"value": int(request.payload["value"])}

@blueprint.action("some_action")
def handle_action():
    try:
        result = process_data()
        return response.send(result)
    except ValueError as e:
        return response.error(f"Invalid data: {e}")
    except Exception as e:
        direct_logger.error(f"Unexpected error in some_action: {e}")
        return response.error("An unexpected error occurred")

# -- "Registering the Blueprint" -------------------------------------------------------

app = Daebus(__name__)
app.register_blueprint(users_bp)
app.register_blueprint(blueprint)

if __name__ == "__main__":
    app.run(service="blueprint_service")
