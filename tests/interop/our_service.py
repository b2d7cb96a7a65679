"""The interop service built on OUR daebus, written against the 0.0.31-compatible API.

Usage: our_service.py SERVICE   (DAEBUS_REDIS_URL names the server)

Actions: `echo`, `stream` (three parts, then a final one), `fail` (an error reply) and
`crash` (raises; our package turns that into an error reply). Whatever arrives on
`interop.to_ours` is re-broadcast as {"got": message} on `interop.ours_got`.
"""

from __future__ import annotations

import sys
from typing import Any

from daebus import Daebus, broadcast, request, response

app = Daebus("interop-ours")


@app.action("echo")
def echo() -> None:
    response.send(request.payload)


@app.action("stream")
def stream() -> None:
    for i in range(3):
        response.send({"i": i}, final=False)
    response.send({"done": True})


@app.action("fail")
def fail() -> None:
    response.error("ours says no")


@app.action("crash")
def crash() -> None:
    raise ValueError("boom")


@app.listen("interop.to_ours")
def got(message: dict[str, Any]) -> None:
    broadcast.send("interop.ours_got", {"got": message})


if __name__ == "__main__":
    app.run(service=sys.argv[1])
