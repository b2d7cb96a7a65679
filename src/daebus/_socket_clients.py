"""The clients of a :class:`~daebus.DaebusWebSocket`, and reaching them from any thread.

Connections belong to the server's event loop. Code on that loop (``async def``
handlers) queues frames and closes directly; code on any other thread (plain ``def``
handlers, actions, jobs, user threads, other loops) has the work done on the server's
loop with ``run_coroutine_threadsafe`` and waits, with a timeout, for the real outcome.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol, TypeVar

from ._socket_connection import WebSocketConnection

__all__ = ["ClientTable"]

log = logging.getLogger("daebus.websocket")

T = TypeVar("T")


class _Timeouts(Protocol):
    send_timeout: float
    close_timeout: float


class ClientTable:
    """Accepted and pending clients by id, and sending to them from any thread.

    A client is *pending* while its connect handler runs: it can be sent to and looked
    up by id, but it is not listed, counted nor reached by broadcasts until accepted.
    """

    def __init__(self, settings: _Timeouts) -> None:
        self._settings = settings
        self.accepted: dict[str, WebSocketConnection] = {}
        self.pending: dict[str, WebSocketConnection] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._side_tasks: set[asyncio.Task[Any]] = set()

    # -- the loop ----------------------------------------------------------------------
    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve from ``loop`` (called on it, at start)."""
        self.loop = loop
        self._loop_thread = threading.get_ident()

    def unbind(self) -> None:
        """Forget the loop (at stop): sending then reports that nothing was sent."""
        for task in list(self._side_tasks):
            task.cancel()
        self.loop = self._loop_thread = None

    def on_loop(self) -> bool:
        """Whether the caller runs on the server's loop thread."""
        return self._loop_thread is not None and threading.get_ident() == self._loop_thread

    def call_on_loop(
        self, make: Callable[[], Coroutine[Any, Any, T]], default: T, timeout: float
    ) -> T:
        """Run a coroutine on the server's loop from another thread and wait for it."""
        loop = self.loop
        if loop is None:
            return default
        coro = make()
        try:
            future = asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:  # the loop closed meanwhile
            coro.close()
            return default
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            log.warning("a WebSocket operation did not finish within %.1fs", timeout)
        except concurrent.futures.CancelledError:
            pass
        return default

    async def await_on_loop(self, make: Callable[[], Coroutine[Any, Any, T]], default: T) -> T:
        """Await a coroutine on the server's loop, from that loop or from another one."""
        loop = self.loop
        if loop is None:
            return default
        if asyncio.get_running_loop() is loop:
            return await make()
        coro = make()
        try:
            future = asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:
            coro.close()
            return default
        return await asyncio.wrap_future(future)

    def keep(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a coroutine as a task of its own on the loop (called on the loop)."""
        assert self.loop is not None
        task = self.loop.create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    # -- looking clients up ------------------------------------------------------------
    def lookup(self, client_id: str) -> WebSocketConnection | None:
        """An accepted or pending client."""
        connection = self.accepted.get(client_id)
        return connection if connection is not None else self.pending.get(client_id)

    def everyone(self) -> list[WebSocketConnection]:
        """Accepted and pending clients."""
        return [*self.accepted.values(), *self.pending.values()]

    def unique_id(self, wanted: str) -> str:
        """``wanted``, or ``wanted_2``, ``wanted_3``... if it is in use."""
        if self.lookup(wanted) is None:
            return wanted
        number = 2
        while self.lookup(f"{wanted}_{number}") is not None:
            number += 1
        unique = f"{wanted}_{number}"
        log.warning("client id %r is in use; the new connection gets %r", wanted, unique)
        return unique

    # -- sending -----------------------------------------------------------------------
    async def send_frames(self, client_ids: Iterable[str], frame: bytes) -> dict[str, bool]:
        """Send and wait (on the loop); client id -> written."""
        futures: dict[str, asyncio.Future[bool] | None] = {}
        for cid in client_ids:
            connection = self.lookup(cid)
            futures[cid] = connection.push(frame) if connection is not None else None
        waiting = [future for future in futures.values() if future is not None]
        if waiting:
            await asyncio.wait(waiting, timeout=self._settings.send_timeout)
        return {
            cid: future is not None and future.done() and future.result()
            for cid, future in futures.items()
        }

    def queue_frames(self, client_ids: Iterable[str], frame: bytes) -> dict[str, bool]:
        """Queue without waiting (on the loop); client id -> queued."""
        queued: dict[str, bool] = {}
        for cid in client_ids:
            connection = self.lookup(cid)
            queued[cid] = connection is not None and not connection.closed
            if connection is not None and queued[cid]:
                connection.push(frame)
        return queued

    def send(self, client_ids: list[str], frame: bytes) -> dict[str, bool]:
        """Send from any thread: queued on the loop, written (and waited for) elsewhere."""
        if self.on_loop():
            return self.queue_frames(client_ids, frame)
        default = dict.fromkeys(client_ids, False)
        return self.call_on_loop(
            lambda: self.send_frames(client_ids, frame),
            default,
            self._settings.send_timeout + 1,
        )

    def deliver(self, client_id: str, frame: bytes) -> Any:
        """Send to one client: an awaitable future on the loop, a bool elsewhere."""
        if self.on_loop():
            connection = self.lookup(client_id)
            if connection is not None:
                return connection.push(frame)
            assert self.loop is not None
            future: asyncio.Future[bool] = self.loop.create_future()
            future.set_result(False)
            return future
        return self.send([client_id], frame)[client_id]

    # -- closing -----------------------------------------------------------------------
    async def close(self, client_ids: Iterable[str], code: int, reason: str) -> int:
        """Close clients and wait for their close handshakes (on the loop)."""
        closes = []
        for cid in client_ids:
            connection = self.lookup(cid)
            if connection is not None and not connection.closed:
                closes.append(connection.close(code, reason))
        if closes:
            await asyncio.wait(closes, timeout=self._settings.close_timeout + 0.5)
        return len(closes)

    def close_from_anywhere(self, client_ids: list[str], code: int, reason: str) -> int:
        """Close clients from any thread: queued on the loop, waited for elsewhere."""
        if self.on_loop():
            closing = [self.lookup(cid) for cid in client_ids]
            open_ones = [c for c in closing if c is not None and not c.closed]
            for connection in open_ones:
                connection.close(code, reason)
            return len(open_ones)
        return self.call_on_loop(
            lambda: self.close(client_ids, code, reason), 0, self._settings.close_timeout + 1
        )

    async def close_all(
        self, code: int, reason: str, timeout: float | None, skip: str | None = None
    ) -> int:
        """Close every client; wait up to ``timeout`` for them to be gone (not ``skip``)."""
        connections = self.everyone()
        for connection in connections:
            if not connection.closed:
                connection.close(code, reason)
        ends = [c.done for c in connections if c.client_id != skip and not c.done.done()]
        if timeout is not None and ends:
            _done, pending = await asyncio.wait(ends, timeout=timeout)
            if pending:
                log.warning("%d WebSocket client(s) did not go away in time", len(pending))
        return len(connections)
