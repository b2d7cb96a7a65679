# Blueprint guide, "Complete Example" (rebuilt from its description), WebSocket parts:
# the users blueprint's "get_users" socket type, and the auth blueprint's connect handler
# ws_authenticate, which reads data.get("token"): the token of the handshake's query
# (ws://localhost:8081/?token=...), obtained with the "login" action. In daebus 0.0.31
# the connect data was always {} and nobody was ever authenticated. The pub/sub parts are
# in examples/blueprint/, the HTTP parts in examples/http/blueprint_complete.py.
# Run: python examples/websockets/blueprint_auth.py

import secrets
import time

from daebus import Blueprint, Daebus, DaebusHttp, DaebusWebSocket, request, response

# -- blueprints/users.py ---------------------------------------------------------------

users_bp = Blueprint("users")

users = {"user_1": {"id": "user_1", "email": "user@example.com", "name": "Example User"}}


@users_bp.socket("get_users")
def ws_get_users(data, client_id):
    return {"users": list(users.values())}


# -- blueprints/auth.py ----------------------------------------------------------------

auth_bp = Blueprint("auth")

tokens = {}


def verify_token(token):
    token_data = tokens.get(token)
    if token_data is None or token_data["expires_at"] < time.time():
        return None
    return token_data["user_id"]


@auth_bp.action("login")
def login():
    if (
        request.payload.get("email") == "user@example.com"
        and request.payload.get("password") == "password"
    ):
        token = secrets.token_hex(16)
        tokens[token] = {"user_id": "user_1", "expires_at": time.time() + 3600}
        return response.send({"token": token, "expires_in": 3600})
    return response.error("Invalid email or password")


@auth_bp.socket_connect()
def ws_authenticate(data, client_id):
    token = data.get("token")

    if not token:
        return {"authenticated": False, "message": "No authentication token provided"}

    user_id = verify_token(token)
    if not user_id:
        return {"authenticated": False, "message": "Invalid or expired token"}

    return {"authenticated": True, "user_id": user_id}


# -- app.py ----------------------------------------------------------------------------


def create_app():
    app = Daebus(__name__)

    http = DaebusHttp(port=8080)
    websocket = DaebusWebSocket()
    app.attach(http)
    app.attach(websocket)

    app.register_blueprint(users_bp)
    app.register_blueprint(auth_bp)
    return app


def main():
    create_app().run(service="user_service")


if __name__ == "__main__":
    main()
