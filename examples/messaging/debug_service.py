# Messaging guide, "Debugging Tips" 1: the document's one line,
# `app.run(service="my_service", debug=True)`, completed into a service: the import
# line, the app and a "get_status" action (which tip 3, check_service.py, calls) are
# added. With debug=True the service logs each message it handles.
# Run: python examples/messaging/debug_service.py

from daebus import Daebus, response

app = Daebus(__name__)

@app.action("get_status")
def get_status():
    return response.send({"status": "healthy"})

if __name__ == "__main__":
    app.run(service="my_service", debug=True)
