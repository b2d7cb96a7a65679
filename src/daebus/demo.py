"""Two services talking: ``python -m daebus.demo``.

``inventory`` streams a stock count and broadcasts what it did; ``shop`` answers an
order by calling ``inventory`` and listens to its broadcasts. With no Redis configured
(``$DAEBUS_REDIS_URL``), it runs on a private embedded server.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

from . import Daebus, DaebusCaller, broadcast, request, response
from .config import ENV_REDIS_URL
from .server import EmbeddedServer

inventory = Daebus("inventory")
shop = Daebus("shop")
shop_inventory = DaebusCaller("inventory")
heard: list[Any] = []
heard_event = threading.Event()


@inventory.action("stock")
def stock() -> Any:
    """Stream the count of each warehouse, then the total."""
    item = request.payload["item"]
    for warehouse in ("north", "south", "east"):
        response.send({"warehouse": warehouse, "item": item, "count": 2}, final=False)
    broadcast.send("inventory.events", {"event": "counted", "item": item})
    return {"item": item, "total": 6}


@shop.action("order")
def order() -> Any:
    """Answer an order by asking the inventory service."""
    item = request.payload["item"]
    parts: list[Any] = []
    stock = shop_inventory.send_request("stock", {"item": item}, on_progress=parts.append)
    return {"item": item, "in_stock": stock["total"], "warehouses": len(parts)}


@shop.listen("inventory.events")
def on_inventory_event(event: Any) -> None:
    """Remember what the inventory service announced."""
    heard.append(event)
    heard_event.set()


@contextlib.contextmanager
def _redis_url() -> Iterator[str]:
    url = os.environ.get(ENV_REDIS_URL)
    if url:
        yield url
        return
    with EmbeddedServer() as server:
        print(f"no {ENV_REDIS_URL} set: started an embedded server at {server.url}")
        yield server.url


def main() -> int:
    """Run the demo; returns the exit code."""
    with _redis_url() as url:
        inventory.start("inventory", redis_url=url)
        shop.start("shop", redis_url=url)
        try:
            with DaebusCaller("shop", redis_url=url) as caller:
                parts: list[Any] = []
                print("caller -> inventory.stock {'item': 'gizmo'} (a streamed reply)")
                with DaebusCaller("inventory", redis_url=url) as direct:
                    for part in direct.stream("stock", {"item": "gizmo"}):
                        parts.append(part)
                        print(f"  part: {part}")
                print("caller -> shop.order {'item': 'widget'} (shop calls inventory)")
                result = caller.send_request("order", {"item": "widget"})
                print(f"  reply: {result}")
                if not heard_event.wait(5):
                    print("the shop's listener heard nothing", file=sys.stderr)
                    return 1
                print(f"shop's listener heard on inventory.events: {heard[0]}")
            ok = result == {"item": "widget", "in_stock": 6, "warehouses": 3} and len(parts) == 4
            print("demo OK" if ok else "demo FAILED")
            return 0 if ok else 1
        finally:
            shop_inventory.close()
            shop.stop()
            inventory.stop()


if __name__ == "__main__":
    sys.exit(main())
