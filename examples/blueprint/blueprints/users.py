# Blueprint guide, "Complete Example": the user blueprint, blueprints/users.py
# (rebuilt from its description). Pub/sub parts only: the guide's HTTP routes
# (/api/users, /api/users/<user_id>) and the "get_users" WebSocket handler come with the
# HTTP/WebSocket examples.

import time
import uuid

from daebus import Blueprint, broadcast, direct_logger, request, response

users_bp = Blueprint("users")

# Users kept in memory for the example
users = {}

@users_bp.action("get_user")
def get_user():
    user_id = request.payload.get("id")

    if user_id not in users:
        return response.error(f"User {user_id} not found")

    return response.send(users[user_id])

@users_bp.action("create_user")
def create_user():
    user_data = request.payload

    if not user_data.get("email"):
        return response.error("Email is required")

    user_id = f"user_{uuid.uuid4().hex[:8]}"
    users[user_id] = {
        "id": user_id,
        "email": user_data["email"],
        "name": user_data.get("name", ""),
        "created_at": time.time()
    }

    # Tell the other services
    broadcast.send("user_events", {"type": "user_created", "user_id": user_id})

    return response.send(users[user_id])

@users_bp.listen("user_events")
def handle_user_event(data):
    direct_logger.info(f"User event: {data.get('type')} for {data.get('user_id')}")

@users_bp.background("user_cleanup", 3600)  # hourly
def cleanup_inactive_users():
    try:
        # Forget users inactive for more than 30 days
        cutoff = time.time() - 30 * 24 * 3600
        removed = 0

        for user_id, user in list(users.items()):
            if user.get("last_active", user["created_at"]) < cutoff:
                del users[user_id]
                removed += 1

        direct_logger.info(f"Removed {removed} inactive users")
    except Exception as e:
        direct_logger.error(f"User cleanup failed: {e}")
