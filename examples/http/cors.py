# HTTP guide, "CORS Configuration" (rebuilt from its description): a cors_config dict
# adds CORS headers to the responses and answers the browsers' preflight OPTIONS.
# Run: python examples/http/cors.py

from daebus import Daebus, DaebusHttp

app = Daebus(__name__)

cors_config = {
    "allowed_origins": ["http://localhost:3000", "https://example.com"],
    "allowed_methods": ["GET", "POST", "PUT", "DELETE"],
    "allowed_headers": ["Content-Type", "Authorization"],
    "expose_headers": ["X-Total-Count"],
    "allow_credentials": True,
    "max_age": 3600,
}

http = DaebusHttp(port=8080, cors_config=cors_config)
app.attach(http)


@app.route("/api/items", methods=["GET", "POST"])
def items(req):
    if req.method == "POST":
        return {"created": req.payload}, 201
    return {"items": ["a", "b"]}


if __name__ == "__main__":
    app.run(service="cors_service")
