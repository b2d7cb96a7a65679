# HTTP guide, "Handling POST Requests" (rebuilt from its description): the JSON body
# is in req.payload; the new user comes back with status 201.
# Run: python examples/http/create_user.py
#   curl -X POST -H 'Content-Type: application/json' -d '{"name": "Ada"}' localhost:8080/users

import uuid

from daebus import Daebus, DaebusHttp

app = Daebus(__name__)
http = DaebusHttp(port=8080)
app.attach(http)


@app.route("/users", methods=["POST"])
def create_user(req):
    user_data = req.payload

    user = {"id": str(uuid.uuid4()), "name": user_data.get("name"), "email": user_data.get("email")}

    return user, 201


if __name__ == "__main__":
    app.run(service="user_service")
