# HTTP guide, "Authentication" (rebuilt from its description): 401 without an
# Authorization header, 403 for a bad token, 200 otherwise.
# Run: python examples/http/protected.py
#   curl -H 'Authorization: Bearer valid-token' localhost:8080/protected

from daebus import Daebus, DaebusHttp

app = Daebus(__name__)
http = DaebusHttp(port=8080)
app.attach(http)

VALID_TOKENS = {"valid-token"}


@app.route("/protected")
def protected_endpoint(req):
    auth_header = req.headers.get("Authorization")

    if not auth_header:
        return {"error": "Authentication required"}, 401

    token = auth_header.replace("Bearer ", "")
    if token not in VALID_TOKENS:
        return {"error": "Invalid token"}, 403

    return {"message": "You have access to this protected resource"}


if __name__ == "__main__":
    app.run(service="secure_service")
