"""This instance's entry in the service registry: what it runs, and how it fares.

Every running instance keeps one entry (:func:`daebus.protocol.registry_key`, listed in
:func:`daebus.protocol.registry_index`): a JSON object naming the service, the instance,
its host and pid, the daebus and Python versions, when it started, its actions,
listeners, HTTP routes and WebSocket handlers, and its counts of messages in flight,
handled and failed. It is written when the service has subscribed everything, then at
every heartbeat, and lives :data:`EXPIRY_BEATS` heartbeats: a killed instance drops out
of the registry within three heartbeats; one that stops deletes its entry as soon as it
begins to stop. :mod:`daebus.registry` reads it.

The heartbeat is the instance's renewal among its service's instances
(:data:`.instances.RENEW_EVERY`): the entry is written with that renewal, in the same
write to the server, so an idle service wakes up no more often for it.

Nothing of it is paid for per message: the counts are plain integers that the runtime
bumps as each message finishes (:class:`Tally`), and only the heartbeat publishes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from .. import encoding, protocol
from ..exceptions import TransportError
from . import instances

if TYPE_CHECKING:
    from . import ServiceRuntime

__all__ = ["EXPIRY_BEATS", "Presence", "Tally"]

logger = logging.getLogger("daebus.runtime")

#: How many heartbeats an entry outlives its last write by: a killed instance is gone
#: from the registry within this many.
EXPIRY_BEATS = 3


class Tally:
    """What the instance handled, and how much failed: plain counts, bumped in place.

    Bumped on the loop, where each message finishes; failures of ``def`` actions are
    counted in the workers, under a lock (they are rare). ``def`` actions that finished
    are the admission's own count (``Admission.jobs_finished``), not counted twice.
    """

    __slots__ = (
        "_lock",
        "broadcast_errors",
        "broadcasts",
        "durable",
        "durable_errors",
        "request_errors",
        "requests",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: Requests answered on the loop (``async def`` actions, durable requests).
        self.requests = 0
        #: Broadcasts handed to the listeners of their channel or pattern.
        self.broadcasts = 0
        #: Durable messages tried (each try counts), and tries that raised.
        self.durable = 0
        self.durable_errors = 0
        #: Listener calls that raised.
        self.broadcast_errors = 0
        #: Actions that raised, on the loop or in a worker.
        self.request_errors = 0

    def request_failed(self) -> None:
        """An action raised (from any thread)."""
        with self._lock:
            self.request_errors += 1


class Presence:
    """This instance's registry entry, written now and at every heartbeat."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime
        self.transport = runtime.transport
        self.started = time.time()
        self._started_at = runtime.loop.time()
        self._index = protocol.registry_index()
        self._key = protocol.registry_key(runtime.service, runtime.instances.id)
        self._watcher: asyncio.Task[None] | None = None
        self._writing = asyncio.Lock()
        self._dropped = False
        # Why the last write failed, if it did: a failure that repeats at every heartbeat
        # (a key of the wrong type, an ACL) is worth one warning, not one a heartbeat.
        self._failing: str | None = None
        self._host = socket.gethostname()
        self._heartbeat = instances.RENEW_EVERY

    async def join(self) -> None:
        """Write the entry, then keep it fresh; a transport without entries keeps none."""
        self._heartbeat = instances.RENEW_EVERY
        if not await self._write():
            return
        self.runtime.instances.on_renew.append(self._write)
        self._watcher = self.runtime.loop.create_task(
            self._drop_at_stop(), name=f"daebus-presence {self.runtime.service}"
        )

    async def leave(self) -> None:
        """Delete the entry at once (idempotent): the instance is stopping."""
        with contextlib.suppress(ValueError):
            self.runtime.instances.on_renew.remove(self._write)
        watcher, self._watcher = self._watcher, None
        if watcher is None:
            return
        stopping = self.runtime.app._stop_event
        if stopping is not None and stopping.is_set():
            # Deleted as the stop began (below): the stop does not wait for that.
            self.runtime.keep(watcher)
            return
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await self._drop()

    async def _drop_at_stop(self) -> None:
        # The entry goes as the stop begins, not once the components (an HTTP server
        # draining) have stopped.
        stopping = self.runtime.app._stop_event
        if stopping is not None:
            await stopping.wait()
            with contextlib.suppress(ValueError):
                self.runtime.instances.on_renew.remove(self._write)
            await self._drop()

    async def _drop(self) -> None:
        self._dropped = True
        # After a write under way: else it could land after the deletion.
        async with self._writing:
            try:
                await self.transport.drop_entry(self._index, self._key)
            except TransportError as exc:  # it expires by itself
                logger.debug("could not remove the registry entry of %s: %s", self._key, exc)

    async def _write(self) -> bool:
        """Write the entry; False if the transport keeps none."""
        ttl_ms = int(self._heartbeat * EXPIRY_BEATS * 1000)
        async with self._writing:
            if self._dropped:
                return True
            try:
                await self.transport.put_entry(
                    self._index, self._key, _fitted(self.describe()), ttl_ms
                )
            except NotImplementedError:
                return False
            except Exception as exc:
                # A TransportError; or a bug, which must not end the instance's renewals
                # that the entry is written with. While the subscriber reconnects, the
                # transport already says that the server is unreachable.
                down = isinstance(exc, TransportError) and not self.transport.receiving
                if self._failing == str(exc):
                    logger.debug("registry entry of %s: still failing", self._key)
                    return True
                self._failing = str(exc)
                self.runtime.throttle.log(
                    logging.DEBUG if down else logging.WARNING,
                    "registry",
                    "instance %s could not refresh its registry entry: %s (said again "
                    "only if the reason changes)",
                    self.runtime.instances.id,
                    exc,
                )
                return True
            if self._failing is not None:
                self._failing = None
                logger.info(
                    "instance %s refreshes its registry entry again", self.runtime.instances.id
                )
        return True

    def describe(self) -> dict[str, Any]:
        """The entry: who this instance is, what it runs, and its counts so far."""
        import daebus  # here: daebus imports the runtime as it initialises

        runtime = self.runtime
        app = runtime.app
        admission = runtime.admission
        tally = runtime.tally
        entry: dict[str, Any] = {
            "service": runtime.service,
            "instance": runtime.instances.id,
            "host": self._host,
            "pid": os.getpid(),
            "daebus": daebus.__version__,
            "python": platform.python_version(),
            "started": round(self.started, 3),
            "uptime": round(runtime.loop.time() - self._started_at, 3),
            "heartbeat": self._heartbeat,
            "ttl": self._heartbeat * EXPIRY_BEATS,
            "state": "stopping" if admission.stopping else "running",
            "actions": sorted(app.action_handlers),
            "workflows": sorted(app.workflow_handlers),
            "listeners": _listeners(runtime),
            "jobs": sorted(task.name for task in app.background_tasks),
            "threads": sorted(app.thread_tasks),
            "health_checks": sorted(app.health_checks),
            "in_flight": admission.active,
            "queued": admission.queued,
            "handled": {
                "requests": tally.requests + admission.jobs_finished,
                "broadcasts": tally.broadcasts,
                "durable": tally.durable,
            },
            "errors": {
                "requests": tally.request_errors,
                "broadcasts": tally.broadcast_errors,
                "durable": tally.durable_errors,
            },
        }
        http = app.http
        if http is not None:
            entry["http"] = {"host": http.host, "port": http.port}
            entry["routes"] = [
                {"path": path, "methods": list(methods)} for path, methods, _ in list(app.routes)
            ]
        if app.websocket is not None:
            entry["sockets"] = sorted(app.socket_handlers)
        return entry


# The lists of an entry that grow with the app: shortened, longest first, to fit.
_LISTS = ("routes", "listeners", "actions", "workflows", "sockets", "jobs", "threads")


def _fitted(entry: dict[str, Any]) -> bytes:
    """``entry`` encoded, its lists shortened until it fits a reader's limit.

    A reader skips a longer entry as junk: the instance would be missing from the
    registry. What was left out is counted under ``"truncated"`` (list -> how many).
    """
    data = encoding.dumps(entry)
    keep = max((len(entry.get(name, ())) for name in _LISTS), default=0)
    while len(data) > protocol.REGISTRY_ENTRY_LIMIT and keep > 0:
        keep //= 2
        truncated: dict[str, int] = {}
        shortened = dict(entry)
        for name in _LISTS:
            items = entry.get(name)
            if isinstance(items, list) and len(items) > keep:
                shortened[name] = items[:keep]
                truncated[name] = len(items)
        shortened["truncated"] = truncated
        data = encoding.dumps(shortened)
    return data


def _listeners(runtime: ServiceRuntime) -> list[dict[str, Any]]:
    app = runtime.app
    found: list[dict[str, Any]] = [
        {
            "channel": channel,
            "pattern": protocol.is_pattern(channel),
            "durable": False,
            "shared": listener.shared,
            "ordered": listener.ordered,
        }
        for channel, listeners in list(app._listeners.items())
        for listener in listeners
    ]
    found.extend(
        {
            "channel": durable.channel,
            "pattern": False,
            "durable": True,
            # The instances of a group share its messages: each is handled by one.
            "shared": True,
            "ordered": durable.ordered,
            "group": durable.group or runtime.service,
        }
        for durable in list(app._durable.values())
    )
    return found
