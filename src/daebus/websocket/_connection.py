"""One WebSocket client of a :class:`~daebus.DaebusWebSocket`, and the pieces around it.

Every frame to a client goes through its outbox, on the server's event loop, so frames
leave in the order they were sent whichever thread sent them, and a close comes after
the frames queued before it (unless the client is not reading: then they are dropped).
The outbox is bounded and every close is bounded in time, so a client that stops
reading costs a fixed amount of memory and is cut off instead of slowing the server.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import WSMsgType, web

__all__ = [
    "CLOSE_TOO_SLOW",
    "DEFAULT_MAX_QUEUE_SIZE",
    "RateLimiter",
    "SocketData",
    "WebSocketConnection",
]

log = logging.getLogger("daebus.websocket")

#: Close reasons are limited to 123 bytes by RFC 6455.
_MAX_REASON = 123
#: How many bytes a client's outbox holds before the client is closed as too slow.
DEFAULT_MAX_QUEUE_SIZE = 1024 * 1024
#: Close code of a client that does not read what it is sent (RFC 6455 policy violation:
#: it broke the server's rule that clients keep up; 1013 would blame the server).
CLOSE_TOO_SLOW = 1008

# aiohttp >= 3.11 sends encoded JSON as a text frame without decoding it to str first.
_SEND_FRAME = hasattr(web.WebSocketResponse, "send_frame")


class SocketData(dict[str, Any]):
    """The ``data`` of a client's message, given to socket handlers as their first argument.

    It is the dict the client sent, and it also answers like the request does, so both
    ways of writing a handler work::

        @app.socket("chat_message")
        def handle_chat(data, client_id):
            text = data.get("message")        # the documented way

        @app.socket("chat_message")
        def handle_chat(req, sid):
            text = req.data.get("message")    # data.data is data itself

    Attributes besides the dict: ``data`` (the object itself), ``payload`` (the whole
    message), ``client_id``, ``message_type`` and ``websocket`` (the connection, None
    once it is gone: it is held weakly, so that keeping ``data`` does not keep a closed
    connection alive). Copies and pickles are plain dicts. Only a dict ``data`` becomes
    a ``SocketData``; a list, a string or ``null`` is passed as is.
    """

    __slots__ = ("_client_id", "_message", "_websocket")

    def __init__(
        self,
        data: Mapping[str, Any],
        message: Mapping[str, Any],
        client_id: str,
        websocket: WebSocketConnection | None = None,
    ) -> None:
        super().__init__(data)
        self._message = message
        self._client_id = client_id
        self._websocket = weakref.ref(websocket) if websocket is not None else None

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return copy.deepcopy(dict(self), memo)

    @property
    def data(self) -> SocketData:
        """The message's data: this dict itself."""
        return self

    @property
    def payload(self) -> Mapping[str, Any]:
        """The whole message the client sent (``{"type": ..., "data": ...}``)."""
        return self._message

    @property
    def client_id(self) -> str:
        """The id of the client that sent the message."""
        return self._client_id

    @property
    def message_type(self) -> Any:
        """The message's ``type``."""
        return self._message.get("type")

    @property
    def websocket(self) -> WebSocketConnection | None:
        """The client's connection, or None once it no longer exists."""
        ref = self._websocket
        return ref() if ref is not None else None


class RateLimiter:
    """At most ``max_messages`` per client in any sliding ``window_seconds``.

    A message that is refused is not counted, so a client that keeps sending is let
    through again as soon as its older messages leave the window.
    """

    def __init__(self, max_messages: int, window_seconds: float) -> None:
        self.max_messages = max_messages
        self.window_seconds = window_seconds
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque()
        horizon = now - self.window_seconds
        while hits and hits[0] <= horizon:
            hits.popleft()
        return hits

    def allow(self, key: str, now: float | None = None) -> bool:
        """Count one message of ``key`` and return True, or return False if over the limit."""
        now = time.monotonic() if now is None else now
        with self._lock:
            hits = self._recent(key, now)
            if len(hits) >= self.max_messages:
                return False
            hits.append(now)
            return True

    def is_limited(self, key: str, now: float | None = None) -> bool:
        """Whether the next message of ``key`` would be refused."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return len(self._recent(key, now)) >= self.max_messages

    def record(self, key: str, now: float | None = None) -> None:
        """Count one message of ``key`` without checking the limit."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._recent(key, now).append(now)

    def forget(self, key: str) -> None:
        """Drop what is known about ``key`` (its client went away)."""
        with self._lock:
            self._hits.pop(key, None)


class _Close:
    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class _Binary:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


#: An outbox entry: JSON text (bytes), raw text (str), a binary frame or a close.
_Frame = bytes | str | _Binary | _Close


def _size(item: _Frame) -> int:
    if isinstance(item, bytes | str):
        return len(item)
    if isinstance(item, _Binary):
        return len(item.data)
    return 0


class WebSocketConnection:
    """A client's connection: what its handshake said, its counters and its outbox.

    It is what ``request.websocket``, ``app.websocket.clients[client_id]`` and a client-id
    generator's ``websocket`` argument are. Besides the handshake (``path``, ``query``,
    ``headers``, ``origin``, ``remote_address``, ``secure``) it has ``send(message)``
    and ``close(code, reason)`` for raw frames; both return an awaitable and must be
    called on the server's event loop (from an ``async def`` handler). Elsewhere, use
    ``app.websocket.send_to_client`` and ``disconnect_client``, which work from any
    thread. ``request`` and ``response`` are aiohttp's request and WebSocketResponse.

    The outbox holds the frames not yet handed to the socket. A client that stops
    reading fills the socket's buffers and then the outbox: past ``max_queue_size``
    bytes it is closed with :data:`CLOSE_TOO_SLOW`, so that it costs bounded memory
    and never slows the senders.
    """

    def __init__(
        self,
        request: web.BaseRequest,
        ws: web.WebSocketResponse,
        loop: asyncio.AbstractEventLoop,
        close_timeout: float,
        *,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        on_close: Callable[[WebSocketConnection], None] | None = None,
    ) -> None:
        self.request = request
        self.response = ws
        self.client_id: str = ""
        self.path = request.path
        self.query: dict[str, str] = dict(request.query)
        self.headers = request.headers
        self.origin = request.headers.get("Origin")
        self.secure = request.secure
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        if isinstance(peer, tuple | list) and len(peer) >= 2:
            self.remote_address: tuple[str, int] = (str(peer[0]), int(peer[1]))
        else:
            self.remote_address = (request.remote or "", 0)
        self.connected_at = time.time()
        self.last_activity = self.connected_at
        self.messages_received = 0
        self.messages_sent = 0
        self.accepted = False
        self.max_queue_size = max_queue_size
        self._loop = loop
        self._close_timeout = close_timeout
        self._on_close = on_close
        self._outbox: deque[tuple[_Frame, asyncio.Future[bool] | None]] = deque()
        self._queued = 0  # bytes in the outbox
        self._busy = False
        self._flusher: asyncio.Task[None] | None = None
        self._closing: asyncio.Future[bool] | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self._finished = False
        #: Whether one of its handlers (or its connect handler) is running.
        self.handling = True
        #: ``(code, reason)`` of a close to start once the running handler has answered.
        self.deferred_close: tuple[int, str] | None = None
        #: Set once the connection's handler has ended (its disconnect handlers ran).
        self.done: asyncio.Future[None] = loop.create_future()

    def __repr__(self) -> str:
        return f"<WebSocketConnection {self.client_id!r} from {self.remote_address[0]}>"

    @property
    def request_headers(self) -> Any:
        """The handshake's headers (the name the ``websockets`` library used)."""
        return self.headers

    @property
    def closed(self) -> bool:
        """Whether the connection is closed or closing (nothing more can be sent)."""
        return self._closing is not None or self._finished or self.response.closed

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in the outbox (not yet handed to the socket)."""
        return self._queued

    def metadata(self) -> dict[str, Any]:
        """A snapshot of what is known about the client (``get_client_metadata``)."""
        now = time.time()
        return {
            "connected_at": self.connected_at,
            "path": self.path,
            "remote_address": self.remote_address,
            "secure": self.secure,
            "origin": self.origin,
            "messages_received": self.messages_received,
            "messages_sent": self.messages_sent,
            "last_activity": self.last_activity,
            "uptime_seconds": now - self.connected_at,
            "idle_seconds": now - self.last_activity,
        }

    # -- raw frames (on the loop) ------------------------------------------------------
    def send(self, message: str | bytes) -> asyncio.Future[bool]:
        """Queue a raw text (str) or binary (bytes) frame; the future tells if it went out."""
        return self.push(_Binary(message) if isinstance(message, bytes) else str(message))

    def close(self, code: int = 1000, reason: str = "") -> asyncio.Future[bool]:
        """Start closing; the future ends with the close handshake.

        The connection leaves the client tables at once and takes no more frames. The
        frames queued before the close go first, unless the client is not reading (its
        socket takes no more data): then they are dropped and the close goes next. A
        client that has not completed the close within ``close_timeout`` is cut off.
        """
        if self._closing is not None:
            return self._closing
        future = self._closing = self._loop.create_future()
        if self._finished or self.response.closed:
            future.set_result(False)
            return future
        if self._on_close is not None:
            self._on_close(self)
        if self._blocked():
            self._drop_backlog()
        self._outbox.append((_Close(code, reason), future))
        self._arm_abort()
        self._kick()
        return future

    # -- the outbox (on the loop) ------------------------------------------------------
    def enqueue(self, item: _Frame) -> bool:
        """Queue a frame without a future; False if the connection takes no more."""
        return self._queue(item, None)

    def push(self, item: _Frame) -> asyncio.Future[bool]:
        """Queue a frame (bytes are JSON text); returns a future of its outcome."""
        future: asyncio.Future[bool] = self._loop.create_future()
        if not self._queue(item, future):
            future.set_result(False)
        return future

    def _queue(self, item: _Frame, future: asyncio.Future[bool] | None) -> bool:
        if self._closing is not None or self._finished:
            return False
        size = _size(item)
        if self._outbox and self._queued + size > self.max_queue_size and self._blocked():
            log.warning(
                "client %s is not reading (%d bytes waiting); closing it with %d",
                self.client_id,
                self._queued,
                CLOSE_TOO_SLOW,
            )
            self.close(CLOSE_TOO_SLOW, "Too slow: send queue full")
            return False
        self._outbox.append((item, future))
        self._queued += size
        self._kick()
        return True

    def _kick(self) -> None:
        if not self._busy:
            self._busy = True
            self._flusher = self._loop.create_task(self._flush())

    def _blocked(self) -> bool:
        """Whether the socket takes no more data for now (the client is not reading)."""
        protocol = getattr(self.request, "protocol", None)
        paused = getattr(protocol, "writing_paused", None)
        if isinstance(paused, bool):
            return paused
        transport = self.request.transport
        if transport is None:
            return False
        return transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]

    def _drop_backlog(self) -> None:
        while self._outbox:
            _item, future = self._outbox.popleft()
            if future is not None and not future.done():
                future.set_result(False)
        self._queued = 0

    def _arm_abort(self) -> None:
        if self._abort_timer is None:
            self._abort_timer = self._loop.call_later(self._close_timeout, self._abort)

    def _abort(self) -> None:
        transport = self.request.transport
        if transport is not None:
            log.info(
                "client %s did not complete the close within %.1fs; connection aborted",
                self.client_id,
                self._close_timeout,
            )
            transport.abort()

    async def write(self, frame: bytes) -> bool:
        """Send a JSON text frame now, after anything already queued."""
        if self._busy or self._closing is not None or self._finished:
            return await self.push(frame)
        # Nothing is queued: write from the calling task, without a task of its own.
        self._busy = True
        try:
            sent = await self._write(frame)
            await self._drain()
        finally:
            self._busy = False
        return sent

    async def _flush(self) -> None:
        try:
            await self._drain()
        finally:
            self._busy = False
            self._flusher = None

    async def _drain(self) -> None:
        while self._outbox:
            item, future = self._outbox.popleft()
            self._queued -= _size(item)
            if isinstance(item, _Close):
                done = await self._close(item.code, item.reason)
            else:
                done = await self._write(item)
            if future is not None and not future.done():
                future.set_result(done)

    async def _write(self, frame: bytes | str | _Binary) -> bool:
        ws = self.response
        if ws.closed:
            return False
        try:
            if isinstance(frame, bytes):
                if _SEND_FRAME:
                    await ws.send_frame(frame, WSMsgType.TEXT)
                else:  # pragma: no cover - older aiohttp
                    await ws.send_str(frame.decode("utf-8"))
            elif isinstance(frame, str):
                await ws.send_str(frame)
            else:
                await ws.send_bytes(frame.data)
        except Exception as exc:  # the peer went away: a failed send, not an error
            log.debug("send to client %s failed: %r", self.client_id, exc)
            return False
        self.messages_sent += 1
        return True

    async def _close(self, code: int, reason: str) -> bool:
        ws = self.response
        if ws.closed:
            return False
        message = reason.encode("utf-8")[:_MAX_REASON]
        try:
            # The abort timer bounds this: it cuts a client that does not answer off.
            await ws.close(code=code, message=message)
        except Exception as exc:
            log.debug("closing client %s failed: %r", self.client_id, exc)
        return True

    async def finish(self) -> None:
        """End the connection: let a close in progress complete, then close what is left.

        Bounded by ``close_timeout``: a client that does not read is cut off then.
        """
        self._arm_abort()
        flusher = self._flusher
        if flusher is not None and flusher is not asyncio.current_task():
            _done, pending = await asyncio.wait({flusher}, timeout=self._close_timeout + 0.5)
            for task in pending:
                task.cancel()
        self._finished = True
        self._drop_backlog()
        if not self.response.closed:
            await self._close(1000, "")
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(True)
        transport = self.request.transport
        if self._abort_timer is not None and (
            transport is None or not transport.get_write_buffer_size()
        ):
            # Nothing left to flush: no need to cut it off later (and keep it alive).
            self._abort_timer.cancel()
            self._abort_timer = None
