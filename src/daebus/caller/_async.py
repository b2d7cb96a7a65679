"""AsyncDaebusCaller: calls one service from asyncio code, and the core both callers share.

A caller has one reply channel, ``caller:<uuid4>``, for its lifetime. Each request gets a
fresh id; replies are routed by id to whoever waits for them (a future, a queue, never a
polling loop). The blocking :class:`~daebus.DaebusCaller` builds on the public core of
this class: connecting, the table of requests waiting for replies, and counting requests
in flight so that a caller shared by threads is never closed under one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from .. import config, context, protocol, tracing as _tracing
from .._compat import timeout as deadline
from .._flow import published
from ..encoding import dumps
from ..exceptions import ConnectionLostError, TransportError
from ..pubsub import DEFAULT_MAX_MESSAGE_SIZE
from ..transport import Delivery, Subscription, Transport, _shared
from . import _messages

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

__all__ = ["AsyncDaebusCaller", "ReplySink", "durable_ttl"]

#: Where a request's replies go: each reply, or the error that ends the wait for them.
ReplySink = Callable[[protocol.Reply | BaseException], None]


def _resolve_url(redis_url: str | None, redis_host: str | None, redis_port: int | None) -> str:
    """Explicit settings, else the running app's server, else the environment/default."""
    if redis_url or redis_host is not None or redis_port is not None:
        return config.resolve_redis_url(redis_url, redis_host, redis_port)
    app = context._find_app()
    if app is not None and app.redis_url is not None:
        return app.redis_url
    return config.resolve_redis_url()


class AsyncDaebusCaller:
    """Calls one service from asyncio code.

    Example::


        async with AsyncDaebusCaller("billing") as billing:
            total = await billing.send_request("charge", {"cents": 700})
            async for part in billing.stream("export", {}):
                ...

    Redis is ``redis_url``, else ``redis_host``/``redis_port``, else the running app's
    server, else ``$DAEBUS_REDIS_URL``, else localhost:6379. It connects on first use
    and, after :meth:`aclose`, again on next use.

    ``tracing=True`` (or a ``tracer_provider``) gives each call an OpenTelemetry span
    and sends its trace context along (see docs/observability.md); ``False`` never
    does. By default a caller traces when it is used in a service that traces
    (``app.enable_tracing()``), in the trace of the handler that calls.
    """

    def __init__(
        self,
        target_service: str,
        *,
        redis_url: str | None = None,
        redis_host: str | None = None,
        redis_port: int | None = None,
        timeout: float = 5,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        tracing: bool | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.target_service = target_service
        #: The caller's own tracing (``tracing=True``); None: off, or its app's.
        self.tracing: _tracing.Tracing | None = None
        if tracing or (tracing is None and tracer_provider is not None):
            self.tracing = _tracing.Tracing(tracer_provider)
        self._follows_app = tracing is None and tracer_provider is None
        self.timeout = timeout
        self.max_message_size = max_message_size
        self.response_channel = protocol.new_reply_channel()
        self.logger = logging.getLogger(f"daebus.caller:{target_service}")
        #: Request id -> where its replies go, while the request waits for them.
        self.pending: dict[Any, ReplySink] = {}
        self._settings = (redis_url, redis_host, redis_port)
        self._transport: Transport | None = None
        self._subscription: Subscription | None = None
        self._connecting: asyncio.Lock | None = None
        # Requests in flight, from any thread. close() while some are in flight is
        # carried out by the last of them to finish, so that a caller shared by
        # threads is never closed under another thread's request.
        self._use_lock = threading.Lock()
        self._in_flight = 0
        self._close_deferred = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.target_service!r} via {self.response_channel}>"

    # -- the core the blocking caller builds on --------------------------------------
    @property
    def connected(self) -> bool:
        """True while subscribed to the reply channel."""
        return self._subscription is not None

    @property
    def transport(self) -> Transport | None:
        """The transport, while the caller is connected (subscribed to its replies); else None."""
        return self._transport

    @property
    def in_flight(self) -> int:
        """Requests under way, from any task or thread."""
        return self._in_flight

    def resolve_url(self) -> str:
        """The server this caller uses (see the class docstring for the order)."""
        return _resolve_url(*self._settings)

    async def connect(self, url: str | None = None) -> None:
        """Subscribe to the reply channel (idempotent). Raises ``TransportError``."""
        if self._subscription is not None:
            return
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self.connected:  # another task connected while we waited
                return
            transport = _shared.acquire(url or self.resolve_url())
            try:
                await transport.connect()
                self._subscription = await transport.subscribe(
                    self.response_channel, self._on_reply
                )
            except BaseException:
                await _shared.release(transport)
                raise
            transport.add_disconnect_handler(self._on_disconnect)
            self._transport = transport

    async def aclose(self) -> None:
        """Unsubscribe and release the connection; the caller reconnects if used again.

        Requests in flight (from other tasks or threads) finish first: the last of them
        to finish closes the caller.
        """
        with self._use_lock:
            if self._in_flight:
                self._close_deferred = True
                return
            subscription, self._subscription = self._subscription, None
            transport, self._transport = self._transport, None
        if subscription is not None:
            await subscription.unsubscribe()
        if transport is not None:
            transport.remove_disconnect_handler(self._on_disconnect)
            await _shared.release(transport)

    async def __aenter__(self) -> AsyncDaebusCaller:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def begin_use(self) -> int:
        """Count a request in: a close() from now on waits for it (see :meth:`end_use`).

        Returns how many requests were in flight before this one.
        """
        with self._use_lock:
            before = self._in_flight
            self._in_flight = before + 1
            self._close_deferred = False  # used again: a close() before this is moot
            return before

    def end_use(self) -> bool:
        """Count a request out; True if a close() deferred for it is now due."""
        with self._use_lock:
            self._in_flight -= 1
            due = self._in_flight == 0 and self._close_deferred
            if due:
                self._close_deferred = False
            return due

    def encode_request(
        self,
        action: str,
        payload: Any,
        request_id: str,
        reply_to: str | None = None,
        trace: dict[str, str] | None = None,
    ) -> bytes:
        """A request for ``action`` whose replies go to ``reply_to`` (the caller's channel).

        ``trace``: the call's trace context (:attr:`daebus.tracing.Call.headers`).
        """
        return _messages.encode_request(
            self.target_service,
            action,
            payload,
            reply_to or self.response_channel,
            request_id,
            self.max_message_size,
            trace,
        )

    def encode_fire_and_forget(self, action: str, payload: Any) -> bytes:
        """A request for ``action`` that wants no reply (in a span of its own, if traced)."""
        traced = self.trace_call(action, answered=False) if _tracing.in_use else None
        if traced is None:
            return _messages.encode_request(
                self.target_service, action, payload, None, protocol.new_request_id()
            )
        with traced:
            return _messages.encode_request(
                self.target_service,
                action,
                payload,
                None,
                protocol.new_request_id(),
                trace=traced.headers,
            )

    def trace_call(
        self, action: str, durable: bool = False, *, answered: bool = True
    ) -> _tracing.Call | None:
        """The span of a call made now, or None if it is not traced.

        Traced by the caller's own tracing, else (by default) by that of the app
        whose handler makes the call. Ask only when :data:`daebus.tracing.in_use`.
        """
        tracing = self.tracing
        if tracing is None and self._follows_app:
            tracing = _tracing.following()
        if tracing is None:
            return None
        return tracing.call(self.target_service, action, durable, answered=answered)

    # -- replies ---------------------------------------------------------------------
    def _on_reply(self, delivery: Delivery) -> None:
        reply = _messages.decode_reply(self.logger, delivery.channel, delivery.data)
        if reply is None:
            return
        try:
            sink = self.pending.get(reply.request_id)
        except TypeError:  # an unhashable request_id
            sink = None
        if sink is None:
            self.logger.debug("ignored a reply for unknown request %r", reply.request_id)
            return
        if reply.final:
            # The first final reply wins; anything after it is ignored.
            self.pending.pop(reply.request_id, None)
        _messages.log_reply(self.target_service, reply)
        sink(reply)

    def _on_disconnect(self, error: TransportError) -> None:
        # Replies published until the connection is back are lost: whoever waits for
        # one learns it now, not at the timeout.
        lost = ConnectionLostError(str(error))
        for sink in list(self.pending.values()):
            sink(lost)

    # -- requests --------------------------------------------------------------------
    def _server_silent(self, action: str, timeout: float) -> TransportError:
        where = self._transport.shown_url if self._transport is not None else "the server"
        return _messages.server_silent(self.target_service, action, timeout, where)

    async def _exchange(
        self,
        action: str,
        payload: Any,
        timeout: float | None,
        ttl: float | None = None,
        traced: _tracing.Call | None = None,
    ) -> AsyncGenerator[protocol.Reply, None]:
        # Use with contextlib.aclosing, so that the finally clauses run on exit.
        service = self.target_service
        self.begin_use()
        try:
            wait = timeout or self.timeout
            request_id = protocol.new_request_id()
            data = self.encode_request(
                action, payload, request_id, trace=traced.headers if traced is not None else None
            )
            replies: asyncio.Queue[protocol.Reply | BaseException] = asyncio.Queue()
            self.pending[request_id] = replies.put_nowait
            try:
                # One deadline for connecting, publishing and the first reply: a server
                # that stops answering cannot make the call outlast its timeout.
                count: int | None = None
                try:
                    async with deadline(wait):
                        await self.connect()
                        transport = self._transport
                        assert transport is not None
                        if not transport.receiving:  # a reply sent now would be missed
                            await transport.until_receiving()
                        if ttl is None:
                            channel = protocol.service_channel(service)
                            count = await transport.publish(channel, data)
                        else:
                            await transport.stream_add(
                                protocol.request_stream_key(service),
                                _messages.durable_entry(data, ttl or wait),
                                protocol.DEFAULT_STREAM_MAXLEN,
                            )
                            count = 1  # left on the stream for an instance to take
                        if count:
                            reply = await replies.get()
                except asyncio.TimeoutError:
                    if count is None:
                        raise self._server_silent(action, wait) from None
                    if ttl is not None:
                        raise _messages.durable_timed_out(service, action, wait) from None
                    raise _messages.timed_out(service, action, wait) from None
                if count == 0:
                    raise _messages.unavailable(service, action)
                while True:
                    if isinstance(reply, BaseException):
                        raise _messages.connection_lost(service, action, reply) from reply
                    if traced is not None and reply.final and reply.is_error:
                        traced.error_reply(reply.error_message)
                    yield reply
                    if reply.final:
                        return
                    try:
                        async with deadline(wait):
                            reply = await replies.get()
                    except asyncio.TimeoutError:
                        raise _messages.timed_out(service, action, wait) from None
            finally:
                self.pending.pop(request_id, None)
        except BaseException as exc:
            if traced is not None:
                traced.failed(exc)
            raise
        finally:
            if traced is not None:
                traced.end()
            if self.end_use():
                await self.aclose()

    async def send_request(
        self,
        action: str,
        payload: Any = None,
        timeout: float | None = None,
        on_progress: Callable[[Any], Any] | None = None,
        *,
        durable: bool = False,
        ttl: float | None = None,
    ) -> Any:
        """Call ``action`` and return the final reply's payload.

        ``on_progress`` gets the payload of each streamed part (it may be async).
        ``timeout`` bounds the call: connecting, sending and the first reply, then each
        next part of a streamed reply; None or 0 means the caller's default.

        ``durable=True`` leaves the request on the service's request stream rather than
        publishing it: it waits there while no instance of the service runs, is run
        once by one of them (again by another if that one dies), and is dropped unrun
        once ``ttl`` seconds (by default the timeout) have passed. See docs/durable.md.

        Raises:
            RemoteError: the service answered with an error.
            ServiceBusyError: the service refused the request unrun (full, or stopping).
            CallTimeoutError: no reply in time.
            ServiceUnavailableError: no service is subscribed to the channel.
            ConnectionLostError: the connection dropped while the call waited.
            TransportError: the server cannot be reached or did not answer in time.
        """
        if payload is None:
            payload = {}
        ttl = durable_ttl(durable, ttl)
        traced = self.trace_call(action, durable) if _tracing.in_use else None
        exchange = self._exchange(action, payload, timeout, ttl, traced)
        async with contextlib.aclosing(exchange) as replies:
            async for reply in replies:
                if not reply.final:
                    if on_progress is not None:
                        try:
                            result = on_progress(reply.payload)
                            if inspect.isawaitable(result):
                                await result
                        except Exception:
                            self.logger.exception("on_progress callback failed")
                    continue
                if reply.is_error:
                    _messages.fail_with(self.target_service, action, reply)
                return reply.payload
        raise AssertionError("unreachable: the exchange ends with a final reply")

    async def stream(
        self,
        action: str,
        payload: Any = None,
        timeout: float | None = None,
        *,
        durable: bool = False,
        ttl: float | None = None,
    ) -> AsyncIterator[Any]:
        """Call ``action`` and yield each part of the reply, the final one last.

        ``durable`` and ``ttl``: as for :meth:`send_request`.
        """
        payload = {} if payload is None else payload
        ttl = durable_ttl(durable, ttl)
        traced = self.trace_call(action, durable) if _tracing.in_use else None
        exchange = self._exchange(action, payload, timeout, ttl, traced)
        async with contextlib.aclosing(exchange) as replies:
            async for reply in replies:
                if reply.final and reply.is_error:
                    _messages.fail_with(self.target_service, action, reply)
                yield reply.payload

    async def send_message(self, channel: str, payload: Any) -> int:
        """Publish ``payload`` on any ``channel``; returns the receiver count.

        If nobody listens on ``channel`` and the service this caller targets is running,
        the message goes to the service as a fire-and-forget request for the action
        named ``channel`` (the docs of 0.0.31 used it so). Raises ``TransportError`` if
        the server does not answer within the caller's timeout.
        """
        async with self._within_timeout(channel):
            await self.connect()
            assert self._transport is not None
            data = dumps(payload)
            published(channel, data, False)
            count = await self._transport.publish(channel, data)
            if count == 0 and channel != self.target_service:
                count = await self._transport.publish(
                    protocol.service_channel(self.target_service),
                    self.encode_fire_and_forget(channel, payload),
                )
        return count

    async def send_to_service(self, payload: Any, action: str | None = None) -> int:
        """Send a fire-and-forget request for ``action`` (no reply is awaited)."""
        data = self.encode_fire_and_forget(action, payload) if action else dumps(payload)
        async with self._within_timeout(action or "(message)"):
            await self.connect()
            assert self._transport is not None
            count = await self._transport.publish(
                protocol.service_channel(self.target_service), data
            )
        return count

    @contextlib.asynccontextmanager
    async def _within_timeout(self, what: str) -> AsyncIterator[None]:
        """Raise TransportError if the server does not answer within the timeout."""
        try:
            async with deadline(self.timeout):
                yield
        except asyncio.TimeoutError:
            raise self._server_silent(what, self.timeout) from None


def durable_ttl(durable: bool, ttl: float | None) -> float | None:
    """None for a request published; else how long a durable one may wait (0: the timeout)."""
    if not durable:
        if ttl is not None:
            raise ValueError("ttl= is for durable requests: add durable=True")
        return None
    if ttl is None:
        return 0.0
    if not ttl > 0:
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
    return float(ttl)
