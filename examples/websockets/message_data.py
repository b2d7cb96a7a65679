# WebSocket guide, "Working with Message Data" (rebuilt from its description): the
# data argument for everyday use, the request proxy for the rest (the message type, the
# whole message, the connection), client metadata, an async handler, an error and a
# handler that answers nothing. In daebus 0.0.31 the request proxy was unreliable after
# an await.
# Run: python examples/websockets/message_data.py

import asyncio

from daebus import Daebus, DaebusHttp, DaebusWebSocket, logger

app = Daebus(__name__)
app.attach(DaebusHttp(port=8080))
app.attach(DaebusWebSocket())

seen = []


@app.socket("example_message")
def handle_example(data, client_id):
    username = data.get("username", "Anonymous")
    action = data.get("action", "view")
    logger.info(f"{username} wants to {action} (client {client_id})")

    from daebus.modules.context import request

    message_type = request.message_type
    websocket_connection = request.websocket
    return {
        "username": username,
        "action": action,
        "message_type": message_type,
        "path": websocket_connection.path,
    }


@app.socket("advanced_handler")
def handle_advanced(data, client_id):
    from daebus.modules.context import request

    full_payload = request.payload
    metadata = app.websocket.get_client_metadata(client_id)
    return {
        "username": data.get("username"),
        "message_type": request.message_type,
        "payload": full_payload,
        "connected_at": metadata.get("connected_at"),
    }


async def some_async_operation(value):  # stand-in for the document's coroutine
    await asyncio.sleep(0)
    return value * 2


@app.socket("async_operation")
async def handle_async(data, client_id):
    from daebus.modules.context import request

    result = await some_async_operation(data.get("value", 1))
    # After the await the request is still this client's message
    return {"result": result, "client_id": request.client_id}


@app.socket("fails")
def handle_failure(data, client_id):
    raise ValueError("Something went wrong")


@app.socket("fire_and_forget")
def handle_fire_and_forget(data, client_id):
    seen.append(data.get("note"))


if __name__ == "__main__":
    app.run(service="message_data_service")
