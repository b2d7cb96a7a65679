# Getting-started guide, "Adding HTTP Support" (rebuilt from its description): the hello
# service also answers GET /hello, where the query string becomes req.payload.
# Run: python examples/getting_started/http_hello.py
#      then: curl "localhost:8080/hello?name=Web"   ->  {"message": "Hello, Web!"}

from daebus import Daebus, DaebusHttp, request, response

app = Daebus(__name__)

http = DaebusHttp(port=8080)
app.attach(http)


@app.action("hello")
def handle_hello():
    name = request.payload.get("name", "World")
    return response.success({"message": f"Hello, {name}!"})


@app.route("/hello")
def http_hello(req):
    name = req.payload.get("name", "World")
    return response.send({"message": f"Hello, {name}!"}, 200)


if __name__ == "__main__":
    app.run(service="hello-service")
