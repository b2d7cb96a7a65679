"""A daebus 0.0.31 service for the interop tests; run it with the 0.0.31 virtualenv's python.

Usage: legacy_service.py SERVICE   (DAEBUS_REDIS_URL names the test server)

Actions: `echo` (replies the payload), `stream` (three progress parts, then a final one),
`fail` (an error reply), `shout` (broadcasts payload["message"] on payload["channel"] and
replies the receiver count). It re-broadcasts whatever arrives on `interop.to_legacy` to
`interop.from_legacy`.
"""

from __future__ import annotations

import sys
from typing import Any

from _legacy_common import bind_broadcast, load_daebus, redis_address

load_daebus()  # must come first: it redirects 0.0.31's localhost:6379 defaults

from daebus import Daebus, broadcast, request, response  # noqa: E402

app = Daebus("interop-legacy")
bind_broadcast(app)


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
    response.error("legacy says no")


@app.action("shout")
def shout() -> None:
    payload = request.payload
    receivers = broadcast.send(payload["channel"], payload["message"])
    response.send({"receivers": receivers})


@app.listen("interop.to_legacy")
def relay(message: dict[str, Any]) -> None:
    broadcast.send("interop.from_legacy", message)


if __name__ == "__main__":
    host, port = redis_address()
    app.run(service=sys.argv[1], redis_host=host, redis_port=port)
