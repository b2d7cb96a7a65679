# Overview, "Key Components: WebSocket Handlers": the lone handler, copied
# unchanged, completed into a service (the imports, the app, DaebusWebSocket and the
# app.run block are added). Its first parameter is named `req` and it reads
# `req.data.get("message")`: the data argument is a dict that also answers `.data`.
# Run: python examples/websockets/overview_socket.py    then connect to ws://localhost:8081

import time  # added

from daebus import Daebus, DaebusHttp, DaebusWebSocket  # added

app = Daebus(__name__)  # added
app.attach(DaebusHttp(port=8080))  # added
app.attach(DaebusWebSocket())  # added


@app.socket("chat_message")
def handle_chat(req, sid):
    message = req.data.get("message", "")

    # Process the message
    return {"status": "received", "timestamp": time.time()}


if __name__ == "__main__":  # added
    app.run(service="overview_socket_service")
