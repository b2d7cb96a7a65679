# HTTP guide, "The Request Object" (rebuilt from its description): a handler reads
# req.method, req.path, req.headers and req.payload.
# Run: python examples/http/request_data.py

from daebus import Daebus, DaebusHttp

app = Daebus(__name__)
http = DaebusHttp(port=8080)
app.attach(http)


@app.route("/api/data", methods=["GET", "POST"])
def handle_data(req):
    method = req.method  # "GET", "POST", ...
    path = req.path  # "/api/data"
    headers = req.headers  # request headers
    data = req.payload  # JSON body, form data, or query parameters

    return {
        "method": method,
        "path": path,
        "content_type": headers.get("Content-Type"),
        "user_agent": headers.get("User-Agent"),
        "data": data,
    }


if __name__ == "__main__":
    app.run(service="data_service")
