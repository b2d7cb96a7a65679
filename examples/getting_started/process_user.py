# Getting-started guide, "Common Patterns: Service-to-Service Communication"
# (rebuilt from its description). The guide's app has no `app.run(...)`; it is added
# (the service name is ours). It calls the "get_user" action of "data-service".
# Run: python examples/getting_started/process_user.py

from daebus import Daebus, DaebusCaller, request, response

app = Daebus(__name__)

# One caller for the other service, shared by every request
data_service = DaebusCaller("data-service")

@app.action("process_user")
def process_user():
    user_id = request.payload.get("user_id")

    # Ask the data service for the user's details
    user_data = data_service.send_request("get_user", {"user_id": user_id})

    # Combine them into our result
    result = {
        "user": user_data,
        "processed": True
    }

    return response.success(result)

if __name__ == "__main__":
    app.run(service="user-processor")
