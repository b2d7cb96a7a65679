"""Typical user code, type-checked by mypy (strict) in CI and never run.

Each ``assert_type`` fails the check if the type a user sees changes, to ``Any`` too:
the proxies are typed as what they stand for, ``attach`` keeps the component's type,
and the decorators return the function they are given.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import redis
from typing_extensions import assert_type

from daebus import (
    Blueprint,
    Daebus,
    DaebusCaller,
    DaebusHttp,
    DaebusWebSocket,
    HttpRequest,
    PubSubBroadcast,
    PubSubRequest,
    PubSubResponse,
    broadcast,
    cache,
    logger,
    request,
    response,
)

app = Daebus("inventory")
http = app.attach(DaebusHttp(port=8080))
assert_type(http, DaebusHttp)
assert_type(app.attach(DaebusWebSocket(path="/ws")), DaebusWebSocket)
assert_type(app.cache, redis.Redis | None)

assert_type(request, PubSubRequest)
assert_type(response, PubSubResponse)
assert_type(broadcast, PubSubBroadcast)
assert_type(cache, redis.Redis)
assert_type(logger, logging.Logger)


@app.action("stock")
def stock() -> dict[str, Any]:
    item = request.payload["item"]  # the payload is JSON, whatever its sender made it
    assert_type(request.channel, str | None)
    # A def handler publishes at once and gets the count; on the loop it is a future.
    sent = response.send({"item": item, "count": 3}, final=False)
    assert_type(sent, int | asyncio.Future[int])
    response.progress({"looked": item}, 50)
    logger.info("stock of %s asked", item)
    return {"item": item, "count": int(cache.get(f"stock:{item}") or 0)}


@app.action("reserve")
async def reserve() -> None:
    if not request.payload:
        response.error("nothing to reserve")
        return
    response.send({"reserved": request.payload})
    await response.flush()  # what the future of each send would tell, for all of them


assert_type(stock, Callable[[], dict[str, Any]])


@app.listen("orders:*")
def on_order(data: Any, channel: str) -> None:
    counts = broadcast.send("audit", {"order": data, "seen_on": channel})
    if isinstance(counts, int):  # outside the loop: published, and counted
        logger.debug("%d auditors", counts)
    broadcast.send_many([("audit", data), ("orders:seen", channel)])


@app.background("report", 60)
def report() -> None:
    broadcast.send("inventory.report", {"alive": True})


@app.route("/items/<int:item_id>", methods=["GET"])
def get_item(req: HttpRequest, item_id: int) -> dict[str, Any]:
    return {"id": item_id, "path": req.path}


@app.socket("ping")
def ping(data: Any, client_id: str) -> str:
    return "pong"


users = Blueprint("users")


@users.action
def whoami() -> str:
    return str(request.payload.get("user"))


app.register_blueprint(users)


def ask() -> None:
    with DaebusCaller("inventory", timeout=2) as caller:
        reply = caller.send_request("stock", {"item": "apple"})
        print(reply)
        assert_type(caller.send_message("orders:new", {"item": "apple"}), int)
