# HTTP guide, "Getting Started" and "Defining Routes" (rebuilt from its description):
# attach DaebusHttp and answer GET /status.
# Run: python examples/http/status.py    then: curl http://localhost:8080/status

import time

from daebus import Daebus, DaebusHttp

app = Daebus(__name__)

# Create and attach the HTTP endpoint
http = DaebusHttp(port=8080, host="0.0.0.0")
app.attach(http)


@app.route("/status")
def get_status(req):
    return {"status": "healthy", "timestamp": time.time()}


if __name__ == "__main__":
    app.run(service="my_service")
