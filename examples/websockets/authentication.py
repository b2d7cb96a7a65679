# WebSocket guide, "Security Considerations: Authentication" (rebuilt from its
# description): the connect handler reads the token of the handshake through the request
# proxy and returns False to refuse the client: the connection is then closed with code
# 1008 (policy violation) before any of its messages is handled, and no disconnect
# handler runs for it. In daebus 0.0.31 returning False only sent {"type": "response",
# "data": false} and the request had no handshake to look at.
# Clients connect to ws://localhost:8081/?token=<token> (or send "Authorization: Bearer
# <token>", for clients that can set headers).
# Run: python examples/websockets/authentication.py

import time

from daebus import Daebus, DaebusHttp, DaebusWebSocket, logger

app = Daebus(__name__)
app.attach(DaebusHttp(port=8080))
app.attach(DaebusWebSocket())

VALID_TOKENS = {"secret-token-1": "user_1", "secret-token-2": "user_2"}  # stand-in token store
authenticated_users = {}


def extract_token_from_request(request):  # stand-in for the document's helper
    token = request.query.get("token")
    if token:
        return token
    header = request.headers.get("Authorization", "")
    return header[len("Bearer ") :] if header.startswith("Bearer ") else None


def validate_token(token):  # stand-in for the document's helper
    return token in VALID_TOKENS


def get_user_id_from_token(token):  # stand-in for the document's helper
    return VALID_TOKENS[token]


@app.socket_connect()
def on_connect(data, client_id):
    from daebus.modules.context import request

    token = extract_token_from_request(request)

    if not token or not validate_token(token):
        # Return False to reject the connection
        return False

    user_id = get_user_id_from_token(token)
    authenticated_users[client_id] = {"user_id": user_id, "authenticated_at": time.time()}

    logger.info(f"Authenticated connection from user {user_id}")
    return {"authenticated": True, "user_id": user_id}


@app.socket_disconnect()
def on_disconnect(data, client_id):
    authenticated_users.pop(client_id, None)


@app.socket("whoami")
def whoami(data, client_id):
    return authenticated_users[client_id]


if __name__ == "__main__":
    app.run(service="secure_service")
