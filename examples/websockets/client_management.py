# WebSocket guide, "Client Management" (rebuilt from its description): pub/sub
# actions that list the connected clients with their metadata, find the inactive ones,
# and kick one out (a "disconnect_notice" first, then the close).
# Run: python examples/websockets/client_management.py
#      then: daebus call client_admin get_connected_clients

import time

from daebus import Daebus, DaebusHttp, DaebusWebSocket, request, response

app = Daebus(__name__)
app.attach(DaebusHttp(port=8080))
app.attach(DaebusWebSocket())

user_sessions = {}


@app.socket_register()
def on_register(data, client_id):
    user_sessions[client_id] = data
    return {"status": "registered"}


@app.action("get_connected_clients")
def get_clients():
    client_ids = list(app.websocket.clients.keys())

    client_info = {}
    for cid in client_ids:
        metadata = app.websocket.get_client_metadata(cid)
        client_info[cid] = {
            "connected_at": metadata.get("connected_at"),
            "remote_address": metadata.get("remote_address"),
            "messages_received": metadata.get("messages_received", 0),
            "is_authenticated": cid in user_sessions,
        }

    return response.send({"count": len(client_ids), "clients": client_info})


@app.action("find_inactive_clients")
def find_inactive_clients():
    # Clients inactive for more than 30 minutes
    threshold = time.time() - (30 * 60)

    inactive = app.websocket.get_clients_by_filter(
        lambda _, meta: meta.get("last_activity", 0) < threshold
    )

    return response.send({"count": len(inactive), "clients": inactive})


@app.action("kick_client")
def kick_client():
    client_id = request.payload.get("client_id")
    reason = request.payload.get("reason", "Disconnected by administrator")

    if not client_id:
        return response.error("No client_id provided")

    app.websocket.send_to_client(
        client_id, {"reason": reason, "timestamp": time.time()}, message_type="disconnect_notice"
    )

    success = app.websocket.disconnect_client(client_id)

    return response.send({"success": success, "client_id": client_id})


if __name__ == "__main__":
    app.run(service="client_admin")
