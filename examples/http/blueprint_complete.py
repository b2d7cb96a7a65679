# Blueprint guide, "Complete Example" (rebuilt from its description), HTTP parts: the
# users blueprint's /api/users routes and the auth blueprint's POST /api/auth/login, in
# an app whose main() attaches DaebusHttp and registers both blueprints. The pub/sub
# parts are in examples/blueprint/; the WebSocket parts come with the WebSocket examples.
# In daebus 0.0.31 GET /api/users answered 404 (the POST route replaced it).
# Run: python examples/http/blueprint_complete.py

import secrets
import time
import uuid

from daebus import Blueprint, Daebus, DaebusHttp, direct_logger, response

# -- blueprints/users.py ---------------------------------------------------------------

users_bp = Blueprint("users")

users = {}


@users_bp.route("/api/users", methods=["GET"])
def list_users(req):
    return {"users": list(users.values())}


@users_bp.route("/api/users/<user_id>", methods=["GET"])
def get_user_http(req, user_id):
    if user_id not in users:
        return response.send({"error": f"User {user_id} not found"}, 404)
    return response.send(users[user_id], 200)


@users_bp.route("/api/users", methods=["POST"])
def create_user_http(req):
    data = req.payload
    if not data.get("email"):
        return response.send({"error": "Email is required"}, 400)

    user_id = f"user_{uuid.uuid4().hex[:8]}"
    users[user_id] = {
        "id": user_id,
        "email": data["email"],
        "name": data.get("name", ""),
        "created_at": time.time(),
    }
    return response.send(users[user_id], 201)


# -- blueprints/auth.py ----------------------------------------------------------------

auth_bp = Blueprint("auth")

tokens = {}


@auth_bp.route("/api/auth/login", methods=["POST"])
def login_http(req):
    email = req.payload.get("email")
    password = req.payload.get("password")

    if email == "user@example.com" and password == "password":
        token = secrets.token_hex(16)
        tokens[token] = {"user_id": "user_1", "expires_at": time.time() + 3600}
        return {"token": token, "expires_in": 3600}, 200

    return {"error": "Invalid email or password"}, 401


# -- app.py ----------------------------------------------------------------------------


def main():
    app = Daebus(__name__)

    http = DaebusHttp(port=8080)
    app.attach(http)

    app.register_blueprint(users_bp)
    app.register_blueprint(auth_bp)

    @app.on_start()
    def initialize():
        direct_logger.info("Application starting...")

    app.run(service="user_service")


if __name__ == "__main__":
    main()
