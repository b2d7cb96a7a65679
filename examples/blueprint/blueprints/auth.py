# Blueprint guide, "Complete Example": the authentication blueprint, blueprints/auth.py
# (rebuilt from its description). Pub/sub parts only: the guide's
# POST /api/auth/login route and its WebSocket connect handler come with the
# HTTP/WebSocket examples.

import secrets
import time

from daebus import request, response

from . import Blueprint

auth_bp = Blueprint("auth")

# Issued tokens, in memory for the example
tokens = {}

def verify_token(token):
    token_data = tokens.get(token)
    if token_data is None:
        return None

    # Expired tokens are forgotten
    if token_data["expires_at"] < time.time():
        del tokens[token]
        return None

    return token_data["user_id"]

@auth_bp.action("login")
def login():
    email = request.payload.get("email")
    password = request.payload.get("password")

    # A real service would check a user database
    if email == "user@example.com" and password == "password":
        token = secrets.token_hex(16)
        tokens[token] = {
            "user_id": "user_1",
            "created_at": time.time(),
            "expires_at": time.time() + 3600  # one hour
        }
        return response.send({"token": token, "expires_in": 3600})

    return response.error("Invalid email or password")

@auth_bp.action("verify_token")
def check_token():
    user_id = verify_token(request.payload.get("token"))

    if not user_id:
        return response.error("Invalid or expired token")

    return response.send({"valid": True, "user_id": user_id})
