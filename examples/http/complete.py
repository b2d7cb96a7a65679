# HTTP guide, "Complete Example" (rebuilt from its description). In daebus 0.0.31
# GET /users answered 404 because the POST /users route replaced it; both work now.
# Run: python examples/http/complete.py
#   curl localhost:8080/users
#   curl -X POST -H 'Content-Type: application/json' -d '{"name": "Ada"}' localhost:8080/users

from daebus import Daebus, DaebusHttp, direct_logger

app = Daebus(__name__)

# HTTP with CORS for browser clients
http = DaebusHttp(
    port=8080,
    cors_config={
        "allowed_origins": "*",
        "allowed_methods": ["GET", "POST"],
    },
)
app.attach(http)

# In-memory user store
users = {
    "1": {"id": "1", "name": "Alice"},
    "2": {"id": "2", "name": "Bob"},
}


@app.route("/")
def index(req):
    return {
        "service": "user_api",
        "endpoints": ["GET /users", "GET /users/<user_id>", "POST /users"],
    }


@app.route("/users", methods=["GET"])
def list_users(req):
    return {"users": list(users.values())}


@app.route("/users/<user_id>", methods=["GET"])
def get_user(req, user_id):
    user = users.get(user_id)
    if user is None:
        return {"error": "User not found"}, 404
    return user


@app.route("/users", methods=["POST"])
def create_user(req):
    data = req.payload
    if not data.get("name"):
        return {"error": "Name is required"}, 400

    user_id = str(len(users) + 1)
    user = {"id": user_id, "name": data["name"]}
    users[user_id] = user
    direct_logger.info(f"Created user {user_id}")
    return user, 201


if __name__ == "__main__":
    app.run(service="user_api")
