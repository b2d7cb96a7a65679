"""``daebus dashboard``: a live page of the services, the bus and the server.

It watches from outside, as a command does: the registry (:mod:`daebus.registry`),
the server's health (:mod:`daebus.health`) and every message on the bus, on a
subscription of its own. From the page one calls an action or publishes a message.

- ``_observer``: the subscription to every channel, and what it counts;
- ``_traffic``: messages per channel per second, in a bounded table;
- ``_latency``: requests matched to their replies, percentiles per action;
- ``_snapshot``: what the page is sent each second, and when it is read;
- ``_operations``: calls and publishes from the page, checked;
- ``_guard``: who may use it (loopback, token, origin);
- ``_app``: the aiohttp application; ``static/``: the page itself.

Imported by the command only: it loads aiohttp and redis-py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from ._app import STATIC, Dashboard
from ._guard import Guard, is_loopback, new_token

__all__ = ["DEFAULT_PORT", "STATIC", "Dashboard", "Guard", "is_loopback", "new_token", "serve"]

#: The port ``daebus dashboard`` listens on unless told otherwise.
DEFAULT_PORT = 8765


async def serve(
    url: str,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    token: str | None = None,
    on_ready: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the dashboard of ``url``'s server on ``host:port`` until ``stop`` is set.

    ``on_ready`` gets the port once it listens (``port=0`` picks a free one). Without
    ``stop`` it serves until cancelled.

    Raises:
        ValueError: bound to an address other than loopback without a token.
        TransportError: the server cannot be reached at start.
        OSError: the port cannot be listened on.
    """
    if token is None and not is_loopback(host):
        raise ValueError(f"a token is required to listen on {host}, which is not loopback")
    dashboard = Dashboard(url, token=token)
    # access_log=None: no line per request (a token is never in a URL, but quiet is safer).
    runner = web.AppRunner(dashboard.make_app(), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        addresses = runner.addresses
        bound = int(addresses[0][1]) if addresses else port
        if on_ready is not None:
            on_ready(bound)
        await (stop or asyncio.Event()).wait()
    finally:
        await runner.cleanup()
