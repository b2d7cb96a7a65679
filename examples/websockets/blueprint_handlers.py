# Blueprint guide, "Supported Features: WebSocket Handlers" (rebuilt from its
# description): a blueprint's socket handler, connect handler and disconnect handler.
# The blueprint is registered here before DaebusWebSocket is attached: daebus 0.0.31
# dropped its socket handlers then; now the order does not matter.
# Run: python examples/websockets/blueprint_handlers.py

from daebus import Blueprint, Daebus, DaebusHttp, DaebusWebSocket

blueprint = Blueprint("users")

connected = set()


@blueprint.socket("user_update")
def handle_user_update(data, client_id):
    return {"status": "processed", "fields": sorted(data)}


@blueprint.socket_connect()
def on_connect(data, client_id):
    connected.add(client_id)
    return {"status": "connected"}


@blueprint.socket_disconnect()
def on_disconnect(data, client_id):
    connected.discard(client_id)


app = Daebus(__name__)
app.register_blueprint(blueprint)
app.attach(DaebusHttp(port=8080))
app.attach(DaebusWebSocket())

if __name__ == "__main__":
    app.run(service="blueprint_socket_service")
