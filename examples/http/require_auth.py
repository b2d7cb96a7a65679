# HTTP guide, "Authentication Decorator" (rebuilt from its description): a wrapper
# between @app.route and the handler answers 401/403 or calls the handler.
# Run: python examples/http/require_auth.py

from functools import wraps

from daebus import Daebus, DaebusHttp

app = Daebus(__name__)
http = DaebusHttp(port=8080)
app.attach(http)

API_KEYS = {"secret-key": "alice"}


def require_auth(handler):
    @wraps(handler)
    def wrapper(req, *args, **kwargs):
        auth_header = req.headers.get("Authorization")
        if not auth_header:
            return {"error": "Authentication required"}, 401

        token = auth_header.replace("Bearer ", "")
        if token not in API_KEYS:
            return {"error": "Invalid token"}, 403

        return handler(req, *args, **kwargs)

    return wrapper


@app.route("/api/profile/<section>")
@require_auth
def get_profile(req, section):
    user = API_KEYS[req.headers["Authorization"].replace("Bearer ", "")]
    return {"user": user, "section": section}


if __name__ == "__main__":
    app.run(service="auth_service")
