# Blueprint guide, "Basic Usage", "Registering the Blueprint" and "Supported Features"
# (rebuilt from its description), HTTP parts: blueprint routes with path parameters,
# two blueprints registered after DaebusHttp is attached, and GET and POST on one path
# (in daebus 0.0.31 the POST route replaced the GET one, which then answered 404).
# Run: python examples/http/blueprint_routes.py

from daebus import Blueprint, Daebus, DaebusHttp, response

users_bp = Blueprint("users")
products_bp = Blueprint("products")

users = {"42": {"id": "42", "name": "Ada"}}
products = {"p1": {"id": "p1", "name": "Lamp", "price": 25}}


@users_bp.route("/api/users/<user_id>")
def get_user_http(req, user_id):
    user = users.get(user_id)
    if user is None:
        return response.send({"error": "User not found"}, 404)
    return response.send(user, 200)


# HTTP routes: one path, two methods
@users_bp.route("/api/users", methods=["GET"])
def list_users(req):
    return {"users": list(users.values())}


@users_bp.route("/api/users", methods=["POST"])
def create_user(req):
    user_id = str(len(users) + 100)
    users[user_id] = {"id": user_id, **req.payload}
    return users[user_id], 201


@products_bp.route("/api/products/<product_id>")
def get_product(req, product_id):
    product = products.get(product_id)
    if product is None:
        return {"error": "Product not found"}, 404
    return product


app = Daebus(__name__)
http = DaebusHttp(port=8080)
app.attach(http)

# Register blueprints after attaching HTTP
app.register_blueprint(users_bp)
app.register_blueprint(products_bp)

if __name__ == "__main__":
    app.run(service="shop_service")
