# HTTP guide, "Using Blueprints" (rebuilt from its description): a blueprint's routes
# /users and /users/<user_id>, registered after DaebusHttp is attached, are served.
# Run: python examples/http/blueprint_users.py

from daebus import Blueprint, Daebus, DaebusHttp

users_bp = Blueprint("users")


@users_bp.route("/users")
def list_users(req):
    return {"users": ["alice", "bob"]}


@users_bp.route("/users/<user_id>")
def get_user(req, user_id):
    return {"user_id": user_id}


app = Daebus(__name__)
http = DaebusHttp(port=8080)
app.attach(http)
app.register_blueprint(users_bp)

if __name__ == "__main__":
    app.run(service="user_service")
