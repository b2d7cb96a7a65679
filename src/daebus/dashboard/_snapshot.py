"""What the page shows, once a second: the registry, the server, and what the bus carried.

:class:`Feed` takes a snapshot every :data:`TICK` seconds and hands it to whoever
watches (the page's WebSockets). Only while someone watches (and :data:`LINGER`
seconds after, so that a page reloaded keeps its figures) does it read the registry
and the server's health, and is the observer subscribed to the bus: an idle dashboard
costs one in-process wake-up a second and nothing on the server, and leaves
``PUBLISH``'s count of receivers alone (see :mod:`._observer`). The readers block, so
they run in a thread, each waiting at most :data:`READ_TIMEOUT` seconds: a slow server
makes the figures older, never the page hang.

Registry entries are written by anyone who can write to the server: each is cut down
(:func:`clip`) before it is sent, so a huge or odd one costs the page nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..exceptions import DaebusError
from ..health import health_stats
from ..registry import instances
from ..transport import Transport
from ..transport._url import redact_url
from ._observer import BusObserver

__all__ = ["READ_TIMEOUT", "TICK", "Feed", "clip", "group_services", "read_server"]

logger = logging.getLogger(__name__)

#: Seconds between two snapshots.
TICK = 1.0
#: Seconds the observer stays subscribed once the last page has gone.
LINGER = 30.0
#: Snapshots between two reads of the server's health (its durable streams).
SERVER_EVERY = 5
#: Seconds a read of the registry or of the server's health waits for the server.
READ_TIMEOUT = 2.0
#: The most instances, durable channels and channel rows a snapshot holds.
MAX_INSTANCES = 500
MAX_DURABLE = 200
MAX_CHANNEL_ROWS = 200

_ENTRY_FIELDS = (
    "service",
    "instance",
    "host",
    "pid",
    "daebus",
    "python",
    "state",
    "uptime",
    "last_seen",
    "heartbeat",
    "in_flight",
    "queued",
    "handled",
    "errors",
    "actions",
    "workflows",
    "listeners",
    "jobs",
    "threads",
    "health_checks",
    "http",
    "routes",
    "sockets",
)

#: Called with each snapshot, as JSON-ready data.
Watcher = Callable[[dict[str, Any]], Awaitable[None]]


def clip(value: Any, depth: int = 4, *, text: int = 200, items: int = 100) -> Any:
    """``value`` with strings, lists and objects cut short, nesting to ``depth``."""
    if isinstance(value, str):
        return value if len(value) <= text else f"{value[:text]}... ({len(value)} characters)"
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth <= 0:
        return "..."
    if isinstance(value, list):
        kept = [clip(v, depth - 1, text=text, items=items) for v in value[:items]]
        return kept + ([f"... ({len(value)} items)"] if len(value) > items else [])
    if isinstance(value, dict):
        return {
            clip(str(k), 0, text=text): clip(v, depth - 1, text=text, items=items)
            for k, v in list(value.items())[:items]
        }
    return clip(repr(value), 0, text=text)


def group_services(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The registry's entries grouped by service: instances, and what any of them runs."""
    services: dict[str, dict[str, Any]] = {}
    # What each service's lists hold already, as canonical JSON: a list's own `in`
    # would make a flood of forged entries cost the square of their size.
    seen: dict[tuple[str, str], set[str]] = {}
    for entry in entries[:MAX_INSTANCES]:
        kept = clip({k: entry[k] for k in _ENTRY_FIELDS if k in entry})
        name = str(kept.get("service"))
        service = services.setdefault(
            name,
            {"service": name, "instances": [], "actions": [], "listeners": [], "routes": []},
        )
        service["instances"].append(kept)
        for field in ("actions", "listeners", "routes"):
            values = kept.get(field)
            if isinstance(values, list):
                held = seen.setdefault((name, field), set())
                for value in values:
                    key = json.dumps(value, sort_keys=True, default=str)
                    if key not in held:
                        held.add(key)
                        service[field].append(value)
    return [services[name] for name in sorted(services)]


def read_services(url: str) -> dict[str, Any]:
    """The registry, grouped by service; ``error`` says why it could not be read."""
    try:
        return {"services": group_services(instances(url, timeout=READ_TIMEOUT)), "error": None}
    except (DaebusError, ValueError, OSError) as exc:
        return {"services": [], "error": str(exc) or type(exc).__name__}


def read_server(url: str) -> dict[str, Any]:
    """The server's health and its durable channels' backlogs and dead letters."""
    stats = health_stats(url, timeout=READ_TIMEOUT)
    server = {
        key: stats.get(key)
        for key in (
            "healthy",
            "error",
            "connected_clients",
            "used_memory_human",
            "pattern_subscriptions",
        )
    }
    durable = []
    dead = 0
    for channel, state in list((stats.get("channels") or {}).items())[:MAX_DURABLE]:
        groups = []
        for group, figures in state.get("groups", {}).items():
            dead += figures.get("dead_letters") or 0
            groups.append({"group": group, **figures})
        durable.append({"channel": channel, "length": state.get("length"), "groups": groups})
    clipped: dict[str, Any] = clip(
        {**server, "durable": durable, "dead_letters": dead}, 6, items=MAX_DURABLE
    )
    return clipped


class Feed:
    """Snapshots every :data:`TICK` seconds, read and sent while someone watches."""

    def __init__(self, url: str, observer: BusObserver, transport: Transport) -> None:
        self.url = url
        self.observer = observer
        self.transport = transport
        self.watchers: set[Watcher] = set()
        self.services: dict[str, Any] = {"services": [], "error": None}
        self.server: dict[str, Any] = {"healthy": None, "durable": [], "dead_letters": 0}
        self._ticks = 0
        self._task: asyncio.Task[None] | None = None
        self._read_at = 0.0
        self._watched_at = 0.0

    def start(self) -> None:
        """Start ticking, on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._tick_forever(), name="dashboard"
            )

    async def stop(self) -> None:
        """Stop ticking and watching the bus (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.observer.stop()

    async def watch(self, watcher: Watcher) -> None:
        """Send ``watcher`` each snapshot from now on; the bus is watched from now on."""
        self.watchers.add(watcher)
        self._watched_at = time.monotonic()
        await self._observe()

    async def _observe(self) -> None:
        try:
            await self.observer.start(self.transport)
        except DaebusError as exc:  # the next tick tries again
            logger.warning("the dashboard cannot watch the bus: %s", exc)

    async def _tick_forever(self) -> None:
        while True:
            started = time.monotonic()
            self.observer.tick(started)
            if self.watchers:
                self._watched_at = started
                try:
                    await self._observe()
                    await self.refresh(server=self._ticks % SERVER_EVERY == 0)
                    self._ticks += 1
                    await self._send(self.snapshot())
                except Exception:  # the next tick tries again
                    logger.exception("the dashboard could not take a snapshot")
            else:
                self._ticks = 0  # the next watcher gets the server's figures at once
                if self.observer.watching and started - self._watched_at > LINGER:
                    await self.observer.stop()
            await asyncio.sleep(max(0.05, TICK - (time.monotonic() - started)))

    async def refresh(self, *, server: bool = True) -> None:
        """Read the registry (and the server's health, if ``server``), in a thread."""
        reads: list[Awaitable[dict[str, Any]]] = [asyncio.to_thread(read_services, self.url)]
        if server:
            reads.append(asyncio.to_thread(read_server, self.url))
        results = await asyncio.gather(*reads)
        self.services = results[0]
        if server:
            self.server = results[1]
        self._read_at = time.time()

    def snapshot(self) -> dict[str, Any]:
        """The latest figures, as the page takes them."""
        names = frozenset(s["service"] for s in self.services["services"])
        figures = self.observer.figures(names)
        channels = figures["channels"]
        figures["channels"] = channels[:MAX_CHANNEL_ROWS]
        figures["channels_not_shown"] = max(0, len(channels) - MAX_CHANNEL_ROWS)
        return {
            "time": time.time(),
            "read_at": self._read_at,
            "redis": redact_url(self.url),
            "services": self.services["services"],
            "registry_error": self.services["error"],
            "server": self.server,
            "traffic": figures,
        }

    async def _send(self, snapshot: dict[str, Any]) -> None:
        watchers = list(self.watchers)
        results = await asyncio.gather(*(w(snapshot) for w in watchers), return_exceptions=True)
        for watcher, result in zip(watchers, results, strict=True):
            if isinstance(result, BaseException):  # its socket closed, or was too slow
                self.watchers.discard(watcher)
