"""The clients of a :class:`~daebus.DaebusWebSocket`, and reaching them from any thread.

Connections belong to the server's event loop. Code on that loop (``async def``
handlers) queues frames and closes directly. Code on any other thread (plain ``def``
handlers, actions, jobs, user threads) has the queueing done on the loop with
``call_soon_threadsafe`` and waits only for that: a frame accepted into a client's
outbox, a close started. It never waits for a client's socket, so a client that stops
reading cannot hold up the threads that send to it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol, TypeVar

from ._connection import WebSocketConnection

__all__ = ["ClientTable", "new_client_id"]

log = logging.getLogger("daebus.websocket")

T = TypeVar("T")

#: Seconds the close of every client at stop gets on top of ``close_timeout``, for the
#: connections cut off then to end and their disconnect handlers to run.
_END_GRACE = 1.0


def new_client_id(generator: Callable[[Any, str], Any] | None, websocket: Any, path: str) -> str:
    """A new client's id from ``generator(websocket, path)``, or ``user_<uuid4>``.

    The default is used too when the generator fails or gives no non-empty string:
    a user's mistake there must not refuse every client.
    """
    if generator is not None:
        try:
            client_id = generator(websocket, path)
        except Exception:
            log.exception("the client id generator failed; using a default id")
        else:
            if isinstance(client_id, str) and client_id:
                return client_id
            log.warning(
                "the client id generator returned %r, not a string; using a default id",
                client_id,
            )
    return f"user_{uuid.uuid4()}"


class _Timeouts(Protocol):
    send_timeout: float
    close_timeout: float


class ClientTable:
    """Accepted and pending clients by id, and sending to them from any thread.

    A client is *pending* while its connect handler runs: it can be sent to and looked
    up by id, but it is not listed, counted nor reached by broadcasts until accepted.
    A client leaves both tables as soon as its close starts; until its connection has
    ended it stays in :attr:`live` (which ``max_connections`` counts).
    """

    def __init__(self, settings: _Timeouts) -> None:
        self._settings = settings
        self.accepted: dict[str, WebSocketConnection] = {}
        self.pending: dict[str, WebSocketConnection] = {}
        #: Every connection whose handler has not ended, closing ones included.
        self.live: set[WebSocketConnection] = set()
        #: Handshakes in progress, counted against ``max_connections`` too.
        self.handshakes = 0
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

    def run_on_loop(self, func: Callable[[], T], default: T) -> T:
        """Call ``func()`` on the loop from another thread and return its result.

        ``func`` only queues work, so this waits for the loop to get to it, which it
        does at once unless it is blocked: then ``default`` after ``send_timeout``.
        """
        loop = self.loop
        if loop is None:
            return default
        result: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not result.set_running_or_notify_cancel():
                return  # the caller gave up
            try:
                result.set_result(func())
            except BaseException as exc:
                result.set_exception(exc)

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:  # the loop closed meanwhile
            return default
        try:
            return result.result(self._settings.send_timeout)
        except concurrent.futures.TimeoutError:
            result.cancel()
            log.warning(
                "the WebSocket server's event loop did not answer within %.1fs",
                self._settings.send_timeout,
            )
        except concurrent.futures.CancelledError:
            pass
        return default

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

    def drop(self, connection: WebSocketConnection) -> None:
        """Take a client out of the tables (its close has started, or it has gone)."""
        client_id = connection.client_id
        if self.accepted.get(client_id) is connection:
            del self.accepted[client_id]
        if self.pending.get(client_id) is connection:
            del self.pending[client_id]

    # -- sending -----------------------------------------------------------------------
    def enqueue(self, client_ids: Iterable[str], frame: bytes) -> dict[str, bool]:
        """Queue a frame for some clients (on the loop); client id -> accepted."""
        accepted: dict[str, bool] = {}
        for cid in client_ids:
            connection = self.lookup(cid)
            accepted[cid] = connection is not None and connection.enqueue(frame)
        return accepted

    def enqueue_all(self, frame: bytes) -> int:
        """Queue a frame for every accepted client (on the loop); how many accepted it."""
        return sum(connection.enqueue(frame) for connection in list(self.accepted.values()))

    def send(self, client_ids: list[str], frame: bytes) -> dict[str, bool]:
        """Queue a frame for some clients from any thread; client id -> accepted."""
        if self.on_loop():
            return self.enqueue(client_ids, frame)
        return self.run_on_loop(
            lambda: self.enqueue(client_ids, frame), dict.fromkeys(client_ids, False)
        )

    def broadcast(self, frame: bytes) -> int:
        """Queue a frame for every accepted client from any thread; how many accepted it."""
        if self.on_loop():
            return self.enqueue_all(frame)
        return self.run_on_loop(lambda: self.enqueue_all(frame), 0)

    async def send_frames(self, client_ids: Iterable[str], frame: bytes) -> dict[str, bool]:
        """Send and wait until written (on the loop, up to ``send_timeout``)."""
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
    def start_closing(self, client_ids: Iterable[str], code: int, reason: str) -> int:
        """Start closing clients (on the loop); how many were connected."""
        closing = 0
        for cid in client_ids:
            connection = self.lookup(cid)
            if connection is not None and not connection.closed:
                connection.close(code, reason)
                closing += 1
        return closing

    def close(self, client_ids: list[str], code: int, reason: str) -> int:
        """Start closing clients from any thread; how many were connected (now gone)."""
        if self.on_loop():
            return self.start_closing(client_ids, code, reason)
        return self.run_on_loop(lambda: self.start_closing(client_ids, code, reason), 0)

    async def close_all(
        self, code: int, reason: str, timeout: float | None, skip: str | None = None
    ) -> int:
        """Close every client (pending ones too) and wait up to ``timeout`` for them to end.

        ``skip`` is the client whose handler is calling: it is closed once that handler
        has answered, and not waited for. Returns how many accepted clients were closed.
        """
        count = len(self.accepted)
        for connection in self.everyone():
            if connection.client_id == skip and connection.handling:
                connection.deferred_close = (code, reason)
            else:
                connection.close(code, reason)
        ends = [c.done for c in self.live if c.client_id != skip and not c.done.done()]
        if timeout is not None and ends:
            _done, pending = await asyncio.wait(ends, timeout=timeout)
            if pending:
                log.warning("%d WebSocket client(s) did not go away in time", len(pending))
        return count

    async def shut_down(self, code: int, reason: str) -> None:
        """Close every client for good (at stop), in one ``close_timeout`` for all."""
        await self.close_all(code, reason, self._settings.close_timeout + _END_GRACE)
