# An inventory service, and the unit tests beside it (test_inventory.py) show how to test a
# service with daebus.testing: no Redis, no subprocess, just `pytest examples/testing`.
#
# Run it for real with:  python examples/testing/inventory.py
from daebus import Daebus, broadcast, cache, request, response

app = Daebus(__name__)

#: Below this many left, an order makes the service warn on "inventory:low".
LOW_STOCK = 2


@app.action("add")
def add():
    item = request.payload.get("item")
    if not item:
        return response.error("item is required")
    stock = cache.hincrby("stock", item, int(request.payload.get("quantity", 1)))
    broadcast.send("inventory:changed", {"item": item, "stock": stock})
    return {"item": item, "stock": stock}


@app.action("stock")
def stock():
    return {item: int(count) for item, count in cache.hgetall("stock").items()}


@app.action("export")
def export():
    # A streamed reply: one part per item, then the final reply.
    items = sorted(cache.hgetall("stock").items())
    for item, count in items:
        yield {"item": item, "stock": int(count)}
    return {"items": len(items)}


@app.listen("orders:*")
def on_order(order, channel):
    left = cache.hincrby("stock", order["item"], -order["quantity"])
    broadcast.send("inventory:changed", {"item": order["item"], "stock": left})
    if left < LOW_STOCK:
        broadcast.send("inventory:low", {"item": order["item"], "stock": left, "shop": channel})


if __name__ == "__main__":
    app.run(service="inventory")
