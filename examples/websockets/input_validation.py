# WebSocket guide, "Input Validation" (rebuilt from its description): validation
# failures are returned as ordinary "response" messages with an error field.
# Run: python examples/websockets/input_validation.py

import html

from daebus import Daebus, DaebusHttp, DaebusWebSocket

app = Daebus(__name__)
app.attach(DaebusHttp(port=8080))
app.attach(DaebusWebSocket())

profiles = {}


def sanitize_html(text):  # stand-in for the document's helper
    return html.escape(text)


@app.socket("update_profile")
def handle_profile_update(data, client_id):
    profile_data = data.get("profile", {})

    if not profile_data.get("name"):
        return {"error": "Name is required", "status": "error"}

    if "age" in profile_data and not isinstance(profile_data["age"], int):
        return {"error": "Age must be a number", "status": "error"}

    if "bio" in profile_data:
        profile_data["bio"] = sanitize_html(profile_data["bio"])

    profiles[client_id] = profile_data
    return {"status": "updated", "profile": profile_data}


if __name__ == "__main__":
    app.run(service="profile_service")
