# HTTP guide, "Sending Responses" (rebuilt from its description): response.send(data,
# status) inside a route.
# Run: python examples/http/send_data.py    then: curl localhost:8080/data

from daebus import Daebus, DaebusHttp, response

app = Daebus(__name__)
http = DaebusHttp(port=8080)
app.attach(http)


@app.route("/data")
def get_data(req):
    data = {"items": [1, 2, 3], "count": 3}
    return response.send(data, 200)


if __name__ == "__main__":
    app.run(service="data_service")
