# HTTP guide, "Type Hints" (rebuilt from its description): handlers typed with
# HttpRequest; an HttpResponse built by hand and returned becomes the response.
# Run: python examples/http/type_hints.py

from daebus import Daebus, DaebusHttp, HttpRequest, HttpResponse

app = Daebus(__name__)
http = DaebusHttp(port=8080)
app.attach(http)


@app.route("/typed")
def typed_handler(req: HttpRequest):
    assert isinstance(req, HttpRequest)
    resp = HttpResponse(None)
    return resp.send({"path": req.path, "typed": True}, 200)


if __name__ == "__main__":
    app.run(service="typed_service")
