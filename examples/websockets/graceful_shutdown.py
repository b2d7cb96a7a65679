# WebSocket guide, "Graceful Shutdown" (rebuilt from its description): an action tells
# every client that the server goes down ({"type": "server_shutdown", "data": ...}),
# closes their connections (code 1001) and stops accepting new ones; the service keeps
# running. It answers as soon as the clients are gone (at most 5 s), where daebus 0.0.31
# always slept the whole 5 s first.
# Run: python examples/websockets/graceful_shutdown.py
#      then: daebus call shutdown_service shutdown

from daebus import Daebus, DaebusHttp, DaebusWebSocket, response

app = Daebus(__name__)
app.attach(DaebusHttp(port=8080))
app.attach(DaebusWebSocket())


@app.action("shutdown")
def graceful_shutdown():
    shutdown_message = {
        "message": "Server is shutting down for maintenance",
        "expected_downtime": "10 minutes",
        "reconnect": False,
    }

    app.websocket.graceful_shutdown(timeout=5.0, message=shutdown_message)

    return response.send({"shutdown_initiated": True})


if __name__ == "__main__":
    app.run(service="shutdown_service")
