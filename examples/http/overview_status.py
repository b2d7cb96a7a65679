# Overview, "Key Components: HTTP Endpoints": the lone route, completed into a
# service (the app, DaebusHttp and the app.run block are added).
# Run: python examples/http/overview_status.py    then: curl localhost:8080/api/status

from daebus import Daebus, DaebusHttp, response  # added

app = Daebus(__name__)  # added
app.attach(DaebusHttp(port=8080))  # added


@app.route("/api/status")
def get_status(req):
    return response.send({"status": "operational", "version": "1.0.0"}, 200)


if __name__ == "__main__":  # added
    app.run(service="overview_service")
