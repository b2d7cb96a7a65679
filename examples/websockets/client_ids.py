# WebSocket guide, "Custom Client ID Generation" (rebuilt from its description): ids
# made of the client's IP address and the time. Two connections from one address in the
# same second ask for the same id: the second gets "_2" appended instead of replacing
# the first (as it did in daebus 0.0.31). The generator's path is the real one now.
# Run: python examples/websockets/client_ids.py

import time

from daebus import Daebus, DaebusHttp, DaebusWebSocket

app = Daebus(__name__)
app.attach(DaebusHttp(port=8080))
websocket = DaebusWebSocket()
app.attach(websocket)

paths = []


def custom_id_generator(websocket, path):
    """Client ids from the IP address and the time."""
    paths.append(path)
    client_ip = websocket.remote_address[0] if hasattr(websocket, "remote_address") else "unknown"
    return f"client_{client_ip}_{int(time.time())}"


websocket.set_client_id_generator(custom_id_generator)


@app.socket("whoami")
def whoami(data, client_id):
    return {"client_id": client_id}


if __name__ == "__main__":
    app.run(service="client_id_service")
