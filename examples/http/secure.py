# HTTP guide, "Using the response object" (rebuilt from its description): unpack the
# (data, status) that response.send returns and return them.
# Run: python examples/http/secure.py

from daebus import Daebus, DaebusHttp, response

app = Daebus(__name__)
http = DaebusHttp(port=8080)
app.attach(http)


@app.route("/secure")
def secure_endpoint(req):
    data = {"secret": "42", "user_agent": req.headers.get("User-Agent")}
    resp, status = response.send(data, 200)
    return resp, status


if __name__ == "__main__":
    app.run(service="secure_service")
