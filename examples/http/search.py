# HTTP guide, "Query Parameters" (rebuilt from its description): query values arrive as
# strings in req.payload; the handler converts the numbers.
# Run: python examples/http/search.py    then: curl 'localhost:8080/search?q=lamp&limit=5'

from daebus import Daebus, DaebusHttp

app = Daebus(__name__)
http = DaebusHttp(port=8080)
app.attach(http)


@app.route("/search")
def search(req):
    query = req.payload.get("q", "")
    limit = int(req.payload.get("limit", 10))
    offset = int(req.payload.get("offset", 0))

    results = [f"{query} result {i}" for i in range(offset, offset + limit)]

    return {"query": query, "limit": limit, "offset": offset, "results": results}


if __name__ == "__main__":
    app.run(service="search_service")
