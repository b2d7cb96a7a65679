"""Two services talking: ``daebus demo`` (or ``python -m daebus.demo``).

``inventory`` streams a stock count and broadcasts what it did; ``shop`` answers an
order by calling ``inventory`` and listens to its broadcasts. Both are ordinary apps:
``daebus run daebus.demo:inventory`` runs one on its own.

Given no server (``--redis-url``, ``$DAEBUS_REDIS_URL``), or ``embedded``, the demo runs
on the user's shared embedded server, started if need be: the server every daebus
process falls back to with nothing configured, so the demo takes the path a newcomer's
services take. It never probes localhost:6379: a Redis there may run real services
called ``shop`` or ``inventory``, which the demo's requests must not reach. With
``--keep-running`` it then claims the shared server (:func:`daebus.server.claim_shared_server`)
until it stops: every daebus command and process started meanwhile with no server
configured uses the shared server too, so ``daebus call inventory stock`` finds it.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import threading
from types import FrameType
from typing import Any

import click

from . import Daebus, DaebusCaller, broadcast, request, response
from .config import EMBEDDED, ENV_REDIS_URL
from .server import claim_shared_server, ensure_shared_server
from .transport._url import redact_url

__all__ = ["configured_url", "inventory", "main", "run", "shop"]

inventory = Daebus("inventory")
shop = Daebus("shop")
shop_inventory = DaebusCaller("inventory")
#: What the shop's listener heard, in order.
heard: queue.SimpleQueue[Any] = queue.SimpleQueue()


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
    heard.put(event)


def _say(text: str, **style: Any) -> None:
    click.secho(text, **style)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def configured_url(redis_url: str | None = None) -> str | None:
    """The server the demo was given: ``redis_url``, else ``$DAEBUS_REDIS_URL``, else None.

    None too for ``embedded``: the shared embedded server is the demo's default.
    """
    url = redis_url or os.environ.get(ENV_REDIS_URL) or None
    return None if url == EMBEDDED else url


def _server_url(redis_url: str | None) -> str:
    """The configured server, checked; else the shared embedded server, started if need be."""
    url = configured_url(redis_url)
    if url:
        # Fail now if it is down, rather than when the services give up waiting for it.
        DaebusCaller("inventory", redis_url=url).connect().close()
        return url
    status = ensure_shared_server()
    how = "started it" if status.started else "already running"
    _say(
        f"no server given: using daebus's shared embedded server at {status.url} "
        f"({how}, pid {status.pid})",
        dim=True,
    )
    if status.started:
        _say(
            "it stays up for your other daebus processes; `daebus server --stop` stops it", dim=True
        )
    return status.url


def run(redis_url: str | None = None, *, keep_running: bool = False) -> int:
    """Start both services, show them talking, stop them; returns the exit code.

    ``redis_url`` defaults to ``$DAEBUS_REDIS_URL``, else the shared embedded server
    (which is left running, as it is for any daebus process).
    With ``keep_running`` the services run on after the exchange until SIGINT or
    SIGTERM. Raises ``DaebusError`` when a server cannot be started or reached.
    """
    url = _server_url(redis_url)
    while not heard.empty():  # left over from an earlier run in this process
        heard.get_nowait()
    inventory.start("inventory", redis_url=url)
    try:
        shop.start("shop", redis_url=url)
        try:
            ok = _exchange(url)
            if ok and keep_running:
                if configured_url(redis_url):
                    _wait_for_interrupt(url, claimed=False)
                else:
                    with claim_shared_server("daebus demo"):
                        _wait_for_interrupt(url, claimed=True)
        finally:
            shop.stop()
    finally:
        shop_inventory.close()
        inventory.stop()
    return 0 if ok else 1


def _exchange(url: str) -> bool:
    with DaebusCaller("inventory", redis_url=url) as direct:
        _say('you -> inventory.stock {"item": "gizmo"}: a streamed reply', bold=True)
        parts: list[Any] = []

        def show_part(part: Any) -> None:
            parts.append(part)
            _say(f"  part:  {_json(part)}", fg="cyan")

        counted = direct.send_request("stock", {"item": "gizmo"}, on_progress=show_part)
        _say(f"  reply: {_json(counted)}", fg="green")
    with DaebusCaller("shop", redis_url=url) as caller:
        _say('you -> shop.order {"item": "widget"}: the shop calls inventory.stock', bold=True)
        ordered = caller.send_request("order", {"item": "widget"})
        _say(f"  reply: {_json(ordered)}", fg="green")
    try:
        event = heard.get(timeout=5)
    except queue.Empty:
        _say("the shop's listener heard nothing on inventory.events", fg="red", err=True)
        return False
    _say(f"the shop's listener heard on inventory.events: {_json(event)}", fg="magenta")
    ok = (
        len(parts) == 3
        and counted == {"item": "gizmo", "total": 6}
        and ordered == {"item": "widget", "in_stock": 6, "warehouses": 3}
    )
    _say("demo OK" if ok else "demo FAILED", fg="green" if ok else "red", bold=True)
    return ok


def _wait_for_interrupt(url: str, *, claimed: bool) -> None:
    """Block until SIGINT or SIGTERM, saying how to talk to the services meanwhile.

    ``claimed``: unconfigured commands find the services (the demo claims the shared
    server), so the commands shown need no ``--redis-url``.
    """
    shown = redact_url(url)  # the user knows the password; the terminal's scrollback need not
    option = "" if claimed else f"--redis-url {shown} "
    _say(f"\nThe services keep running on {shown}. In another shell, try:")
    _say(f'  daebus call {option}shop order \'{{"item": "widget"}}\'')
    _say(f"  daebus listen {option}'inventory.*'")
    if claimed:
        _say(
            "Until the demo stops, daebus processes with no server configured use this one.",
            dim=True,
        )
    _say("Press Ctrl-C to stop.", dim=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {signum: signal.signal(signum, on_signal) for signum in _STOP_SIGNALS}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    _say("stopping", dim=True)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def main() -> None:
    """``python -m daebus.demo``: the ``daebus demo`` command, options included."""
    from .cli import color_from_env, demo_command

    demo_command.main(prog_name="python -m daebus.demo", color=color_from_env())


if __name__ == "__main__":
    main()
