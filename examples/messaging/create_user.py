# Messaging guide, "Basic Responses".
# The document shows a lone handler; it is completed into a service the way the guide's
# other examples are: the import lines, `app = Daebus(__name__)` and the `app.run(...)`
# block are added. It runs as "user_service", the service whose "create_user" action the
# guide's register_user example calls (see register_user.py).
# Run: python examples/messaging/create_user.py

import time

from daebus import Daebus, request, response

app = Daebus(__name__)

@app.action("create_user")
def create_user():
    user_data = request.payload

    # Process user creation
    new_user = {
        "id": "user123",
        "name": user_data.get("name"),
        "created_at": time.time()
    }

    # Return success response with the created user
    return response.send(new_user)

if __name__ == "__main__":
    app.run(service="user_service")
