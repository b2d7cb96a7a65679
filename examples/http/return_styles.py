# HTTP guide, "Response Formats" (rebuilt from its description): a handler may return
# response.send(data, status), or a (data, status) tuple.
# Run: python examples/http/return_styles.py

from daebus import Daebus, DaebusHttp, response

app = Daebus(__name__)
http = DaebusHttp(port=8080)
app.attach(http)


@app.route("/example")
def example(req):
    return response.send({"message": "Success"}, 200)


@app.route("/missing")
def missing(req):
    return response.send({"error": "Not found"}, 404)


@app.route("/tuple")
def tuple_response(req):
    return {"data": "example"}, 200


if __name__ == "__main__":
    app.run(service="response_service")
