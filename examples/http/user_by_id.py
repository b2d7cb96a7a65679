# HTTP guide, "URL Parameters" (rebuilt from its description): <user_id> in the path
# becomes the handler's user_id argument (and, as the guide says, is in req.payload too).
# Run: python examples/http/user_by_id.py    then: curl localhost:8080/users/123

from daebus import Daebus, DaebusHttp

app = Daebus(__name__)
http = DaebusHttp(port=8080)
app.attach(http)


@app.route("/users/<user_id>")
def get_user(req, user_id):
    # URL parameters are passed to the handler, and are also in req.payload
    if user_id == "123":
        return {"id": user_id, "name": "John Doe", "email": "john@example.com"}, 200

    return {"error": "User not found"}, 404


if __name__ == "__main__":
    app.run(service="user_service")
