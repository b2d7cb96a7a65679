"""Calling services: :class:`DaebusCaller` (blocking) and :class:`AsyncDaebusCaller`.

A caller has one reply channel, ``caller:<uuid4>``, for its lifetime. Each request gets
a fresh id; replies are routed by id to whoever waits for them (a future or a queue, never
a polling loop). A streamed reply is a run of non-final parts and one final reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import queue
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from typing import Any

from . import config, context, protocol
from ._compat import timeout as deadline
from ._portal import get_portal
from .encoding import dumps
from .exceptions import (
    CallTimeoutError,
    ConnectionLostError,
    MessageTooLargeError,
    RemoteError,
    ServiceBusyError,
    ServiceUnavailableError,
    TransportError,
)
from .pubsub import DEFAULT_MAX_MESSAGE_SIZE
from .transport import ChannelReader, Delivery, Subscription, Transport, _shared
from .transport._url import redact_url

__all__ = ["AsyncDaebusCaller", "DaebusCaller"]

flow = logging.getLogger("daebus.flow")

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
    ) -> None:
        self.target_service = target_service
        self.timeout = timeout
        self.max_message_size = max_message_size
        self.response_channel = protocol.new_reply_channel()
        self.logger = logging.getLogger(f"daebus.caller:{target_service}")
        #: request id -> where its replies go. Internal.
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

    @property
    def connected(self) -> bool:
        """True while subscribed to the reply channel."""
        return self._subscription is not None

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

    def _begin_use(self) -> None:
        with self._use_lock:
            self._in_flight += 1
            self._close_deferred = False  # used again: a close() before this is moot

    def _end_use(self) -> bool:
        """Count a request out; True if a deferred close is now due."""
        with self._use_lock:
            self._in_flight -= 1
            due = self._in_flight == 0 and self._close_deferred
            if due:
                self._close_deferred = False
            return due

    # -- replies ---------------------------------------------------------------------
    def _on_reply(self, delivery: Delivery) -> None:
        reply = self._decode_reply(delivery.channel, delivery.data)
        if reply is None:
            return
        try:
            sink = self.pending.get(reply.request_id)
        except TypeError:  # an unhashable request_id
            sink = None
        if sink is None:
            self._ignore(reply)
            return
        if reply.final:
            # The first final reply wins; anything after it is ignored.
            self.pending.pop(reply.request_id, None)
        self._log_reply(reply)
        sink(reply)

    def _on_disconnect(self, error: TransportError) -> None:
        # Replies published until the connection is back are lost: whoever waits for
        # one learns it now, not at the timeout.
        lost = ConnectionLostError(str(error))
        for sink in list(self.pending.values()):
            sink(lost)

    def _decode_reply(self, channel: str, data: bytes) -> protocol.Reply | None:
        """The reply in ``data``, or None (logged) if it is malformed."""
        try:
            return protocol.decode_reply(data)
        except protocol.BadMessageError as exc:
            self.logger.warning("ignored a malformed reply on %s: %s", channel, exc)
            return None

    def _ignore(self, reply: protocol.Reply) -> None:
        self.logger.debug("ignored a reply for unknown request %r", reply.request_id)

    def _log_reply(self, reply: protocol.Reply) -> None:
        if flow.isEnabledFor(logging.DEBUG):
            flow.debug(
                "<- %s %s request_id=%s final=%s",
                self.target_service,
                reply.status,
                reply.request_id,
                reply.final,
            )

    # -- requests --------------------------------------------------------------------
    def _encode_request(
        self, action: str, payload: Any, request_id: str, reply_to: str | None = None
    ) -> bytes:
        data = protocol.encode_request(
            action, payload, reply_to or self.response_channel, request_id, self.target_service
        )
        if len(data) > self.max_message_size:
            raise MessageTooLargeError(
                f"request of {len(data)} bytes is over the {self.max_message_size}-byte limit"
            )
        return data

    def _unavailable(self, action: str) -> ServiceUnavailableError:
        return ServiceUnavailableError(
            f"Request to {self.target_service}.{action} reached no one: no service is "
            f"subscribed to the channel {protocol.service_channel(self.target_service)!r}"
        )

    def _timed_out(self, action: str, timeout: float) -> CallTimeoutError:
        return CallTimeoutError(
            f"Request to {self.target_service}.{action} timed out after {timeout}s"
        )

    def _server_silent(self, action: str, timeout: float) -> TransportError:
        where = self._transport.shown_url if self._transport is not None else "the server"
        return TransportError(
            f"Request to {self.target_service}.{action} was not sent: no answer from "
            f"{where} within {timeout}s"
        )

    def _connection_lost(self, action: str, error: BaseException) -> ConnectionLostError:
        return ConnectionLostError(
            f"Request to {self.target_service}.{action}: the connection was lost while "
            f"waiting for the reply (the request may have run): {error}"
        )

    def _raise_error(self, action: str, reply: protocol.Reply) -> None:
        busy = reply.error_code == protocol.CODE_BUSY  # refused unrun: full, or stopping
        raise (ServiceBusyError if busy else RemoteError)(
            reply.error_message,
            service=self.target_service,
            action=action,
            request_id=reply.request_id,
            payload=reply.payload,
        )

    async def _exchange(
        self, action: str, payload: Any, timeout: float | None
    ) -> AsyncGenerator[protocol.Reply, None]:
        # Use with contextlib.aclosing, so that the finally clauses run on exit.
        self._begin_use()
        try:
            wait = timeout or self.timeout
            request_id = protocol.new_request_id()
            data = self._encode_request(action, payload, request_id)
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
                        count = await transport.publish(
                            protocol.service_channel(self.target_service), data
                        )
                        if count:
                            reply = await replies.get()
                except asyncio.TimeoutError:
                    if count is None:
                        raise self._server_silent(action, wait) from None
                    raise self._timed_out(action, wait) from None
                if count == 0:
                    raise self._unavailable(action)
                while True:
                    if isinstance(reply, BaseException):
                        raise self._connection_lost(action, reply) from reply
                    yield reply
                    if reply.final:
                        return
                    try:
                        async with deadline(wait):
                            reply = await replies.get()
                    except asyncio.TimeoutError:
                        raise self._timed_out(action, wait) from None
            finally:
                self.pending.pop(request_id, None)
        finally:
            if self._end_use():
                await self.aclose()

    async def send_request(
        self,
        action: str,
        payload: Any = None,
        timeout: float | None = None,
        on_progress: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Call ``action`` and return the final reply's payload.

        ``on_progress`` gets the payload of each streamed part (it may be async).
        ``timeout`` is how long to wait for the reply, or for the next part of a
        streamed reply; None or 0 means the caller's default.

        Raises:
            RemoteError: the service answered with an error.
            CallTimeoutError: no reply in time.
            ServiceUnavailableError: no service is subscribed to the channel.
        """
        if payload is None:
            payload = {}
        async with contextlib.aclosing(self._exchange(action, payload, timeout)) as replies:
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
                    self._raise_error(action, reply)
                return reply.payload
        raise AssertionError("unreachable: the exchange ends with a final reply")

    async def stream(
        self, action: str, payload: Any = None, timeout: float | None = None
    ) -> AsyncIterator[Any]:
        """Call ``action`` and yield each part of the reply, the final one last."""
        exchange = self._exchange(action, {} if payload is None else payload, timeout)
        async with contextlib.aclosing(exchange) as replies:
            async for reply in replies:
                if reply.final and reply.is_error:
                    self._raise_error(action, reply)
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
            count = await self._transport.publish(channel, dumps(payload))
            if count == 0 and channel != self.target_service:
                count = await self._transport.publish(
                    protocol.service_channel(self.target_service),
                    self._fire_and_forget(channel, payload),
                )
        return count

    async def send_to_service(self, payload: Any, action: str | None = None) -> int:
        """Send a fire-and-forget request for ``action`` (no reply is awaited)."""
        data = self._fire_and_forget(action, payload) if action else dumps(payload)
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

    def _fire_and_forget(self, action: str, payload: Any) -> bytes:
        return protocol.encode_request(
            action, payload, None, protocol.new_request_id(), self.target_service
        )


class DaebusCaller:
    """Calls one service from ordinary (threaded) code.

    Example::


        with DaebusCaller("hello-service") as caller:
            print(caller.send_request("hello", {"name": "Daebus"}))

    The same arguments as daebus 0.0.31, plus ``redis_url``. Safe to share between
    threads. From its second request on, a thread calling while no other thread uses
    the caller reads its replies itself, from a connection of the caller's own on a
    second reply channel. Otherwise replies are routed by a background event loop
    shared by all callers in the process, and the waiting thread blocks on a queue.
    Either way ``on_progress`` runs in the thread that called :meth:`send_request`.
    """

    def __init__(
        self,
        target_service: str,
        redis_host: str | None = None,
        redis_port: int | None = None,
        timeout: float = 5,
        *,
        redis_url: str | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self._core = AsyncDaebusCaller(
            target_service,
            redis_url=redis_url,
            redis_host=redis_host,
            redis_port=redis_port,
            timeout=timeout,
            max_message_size=max_message_size,
        )
        self.target_service = target_service
        self.response_channel = self._core.response_channel
        self.logger = self._core.logger
        self.pending_requests = self._core.pending
        # The caller's own reply connection, on its own reply channel, for a thread that
        # calls while no other does (see _start); made for the transport it reads from.
        self._lane: ChannelReader | None = None
        self._lane_transport: Transport | None = None
        self._lane_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<DaebusCaller {self.target_service!r} via {self.response_channel}>"

    @property
    def timeout(self) -> float:
        """The default timeout, in seconds."""
        return self._core.timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._core.timeout = value

    @property
    def redis(self) -> Any:
        """A redis-py client on the caller's server (connects the caller)."""
        return self._transport().blocking_client()  # type: ignore[attr-defined]

    def connect(self) -> DaebusCaller:
        """Connect now rather than on first use. Raises ``TransportError``."""
        self._transport()
        return self

    def _transport(self, timeout: float | None = None) -> Transport:
        core = self._core
        transport = core._transport
        if transport is None or core._subscription is None:
            # Resolve here, in the calling thread, where the app context is visible.
            url = core.resolve_url()
            get_portal().call(
                _bounded(
                    core.connect(url),
                    timeout or core.timeout,
                    f"cannot connect to {redact_url(url)}",
                )
            )
            transport = core._transport
        assert transport is not None
        return transport

    def close(self) -> None:
        """Release the connection; the caller reconnects if it is used again."""
        self._close_lane()
        if self._core._subscription is not None or self._core._transport is not None:
            get_portal().call(self._core.aclose())

    def _close_lane(self) -> None:
        if self._lane_lock.acquire(blocking=False):  # else a request uses it: it stays
            try:
                lane, self._lane, self._lane_transport = self._lane, None, None
                if lane is not None:
                    lane.close()
            finally:
                self._lane_lock.release()

    def __enter__(self) -> DaebusCaller:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _start(
        self, action: str, payload: Any, timeout: float | None
    ) -> tuple[str, Callable[[], protocol.Reply], bool]:
        """Publish a request; return its id, its next reply's getter, and ``alone``.

        ``alone``: the request has the caller's own reply connection (from the caller's
        second request on: see :meth:`_lane_on`). A thread that calls while no other does
        publishes, then reads its reply from that connection itself, as a hand-written
        loop would: no hop to the portal's thread and back. Requests made while others
        are in flight go through the portal, which reads the replies of them all. The
        caller is in use from here until :meth:`_finish` (or a failure here).

        Connecting, publishing and waiting for the first reply share one deadline,
        ``timeout`` from now; each later part of a streamed reply gets ``timeout``.
        """
        core = self._core
        alone = not core._in_flight and self._lane_lock.acquire(blocking=False)
        core._begin_use()  # before looking at the connection: close() now waits for us
        request_id = protocol.new_request_id()
        try:
            wait = timeout or core.timeout
            waits = _Waits(wait, time.monotonic() + wait)
            connected = core._subscription is not None
            transport = self._transport(wait)
            # The whole timeout when no connect took part of it: the same value call
            # after call, so that the socket keeps the timeout it has.
            publish_wait = wait if connected else waits.remaining()
            payload = {} if payload is None else payload
            channel = protocol.service_channel(self.target_service)
            lane = self._lane_on(transport) if alone else None
            if lane is not None:
                data = core._encode_request(action, payload, request_id, lane.channel)
                lane.open(publish_wait)
                core.pending[request_id] = _read_by_the_caller
                if transport.publish_blocking(channel, data, publish_wait) == 0:
                    raise core._unavailable(action)
                return request_id, partial(self._read_alone, lane, request_id, action, waits), True
            if alone:  # a first request, or a transport without such connections
                self._lane_lock.release()
                alone = False
            if not transport.receiving:  # the portal would miss a reply sent now
                get_portal().call(
                    _bounded(
                        transport.until_receiving(),
                        waits.remaining(),
                        f"cannot resubscribe at {transport.shown_url}",
                    )
                )
            data = core._encode_request(action, payload, request_id)
            replies: queue.SimpleQueue[protocol.Reply | BaseException] = queue.SimpleQueue()
            core.pending[request_id] = replies.put
            if core._in_flight == 1:
                # Alone: publish from this thread; a hop to the portal's loop would
                # cost more than the round trip.
                if transport.publish_blocking(channel, data, publish_wait) == 0:
                    raise core._unavailable(action)
            else:
                # Published by the portal's loop, which pipelines the requests of
                # every thread; this one only wakes up for replies (or a failure).
                get_portal().call_soon_batched(
                    _publish_request, transport, channel, data, replies.put
                )
            return request_id, partial(self._next_reply, replies, action, waits), False
        except BaseException:
            self._finish(request_id, alone)
            raise

    def _lane_on(self, transport: Transport) -> ChannelReader | None:
        """The caller's own reply connection on ``transport`` (hold the lane lock).

        None for the first request on a transport: a caller used once (made and closed
        around one call) does not pay for a connection of its own.
        """
        if self._lane_transport is not transport:
            if self._lane is not None:
                self._lane.close()
            self._lane, self._lane_transport = None, transport
            return None
        if self._lane is None:
            self._lane = transport.channel_reader(protocol.new_reply_channel())
        return self._lane

    def _finish(self, request_id: str, alone: bool) -> None:
        """The request is over: forget its id, and the caller is no longer in use for it."""
        self._core.pending.pop(request_id, None)
        if alone:
            self._lane_lock.release()
        self._end_use()

    def _end_use(self) -> None:
        if self._core._end_use():
            self._close_lane()
            try:
                get_portal().call(self._core.aclose())
            except Exception:
                self.logger.exception("closing the caller after its last request failed")

    def _next_reply(
        self,
        replies: queue.SimpleQueue[protocol.Reply | BaseException],
        action: str,
        waits: _Waits,
    ) -> protocol.Reply:
        try:
            reply = replies.get(timeout=waits.next())
        except queue.Empty:
            raise self._core._timed_out(action, waits.wait) from None
        if isinstance(reply, BaseException):
            if isinstance(reply, _NoReceiverError):
                raise self._core._unavailable(action)
            if isinstance(reply, ConnectionLostError):
                raise self._core._connection_lost(action, reply) from reply
            raise reply
        return reply

    def _read_alone(
        self, lane: ChannelReader, request_id: str, action: str, waits: _Waits
    ) -> protocol.Reply:
        """The next reply to ``request_id`` from the caller's own connection."""
        core = self._core
        remaining = waits.next()
        deadline = time.monotonic() + remaining
        while remaining > 0:
            try:
                data = lane.next_message(remaining)
            except TransportError as exc:
                raise core._connection_lost(action, exc) from exc
            if data is None:
                break
            reply = core._decode_reply(lane.channel, data)
            if reply is not None:
                if reply.request_id == request_id:
                    core._log_reply(reply)
                    return reply
                core._ignore(reply)  # a late reply to an earlier request that timed out
            remaining = deadline - time.monotonic()
        raise core._timed_out(action, waits.wait)

    @contextlib.contextmanager
    def _in_use(self) -> Iterator[None]:
        self._core._begin_use()  # before looking at the connection: close() now waits for us
        try:
            yield
        finally:
            self._end_use()

    def send_request(
        self,
        action: str,
        payload: Any = None,
        timeout: float | None = None,
        on_progress: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Call ``action`` and return the final reply's payload.

        ``on_progress`` gets the payload of each streamed part, in this thread.
        ``timeout`` is how long to wait for the reply, or for the next part of a
        streamed reply; None or 0 means the caller's default.

        Raises:
            RemoteError: the service answered with an error (``str(e)`` is its message).
            CallTimeoutError: no reply in time (a ``TimeoutError``).
            ServiceUnavailableError: no service is subscribed to the channel.
        """
        request_id, next_reply, alone = self._start(action, payload, timeout)
        try:
            reply = next_reply()
            while not reply.final:
                if on_progress is not None:
                    try:
                        on_progress(reply.payload)
                    except Exception:
                        self.logger.exception("on_progress callback failed")
                reply = next_reply()
        finally:
            self._finish(request_id, alone)
        if reply.is_error:
            self._core._raise_error(action, reply)
        return reply.payload

    def stream(
        self, action: str, payload: Any = None, timeout: float | None = None
    ) -> Iterator[Any]:
        """Call ``action`` and yield each part of the reply, the final one last."""
        request_id, next_reply, alone = self._start(action, payload, timeout)
        try:
            while True:
                reply = next_reply()
                if reply.final:
                    break
                yield reply.payload
        finally:
            self._finish(request_id, alone)
        if reply.is_error:
            self._core._raise_error(action, reply)
        yield reply.payload

    def send_message(self, channel: str, payload: Any) -> int:
        """Publish ``payload`` on any ``channel``; returns the receiver count.

        If nobody listens on ``channel``, the message goes to the target service as a
        fire-and-forget request for the action named ``channel`` (as the docs of 0.0.31
        used it).
        """
        with self._in_use():
            transport = self._transport()
            count = transport.publish_blocking(channel, dumps(payload), self.timeout)
            if count == 0 and channel != self.target_service:
                count = transport.publish_blocking(
                    protocol.service_channel(self.target_service),
                    self._core._fire_and_forget(channel, payload),
                    self.timeout,
                )
            return count

    def send_to_service(self, payload: Any, action: str | None = None) -> int:
        """Send a fire-and-forget request for ``action`` (no reply is awaited)."""
        data = self._core._fire_and_forget(action, payload) if action else dumps(payload)
        with self._in_use():
            transport = self._transport()
            channel = protocol.service_channel(self.target_service)
            return transport.publish_blocking(channel, data, self.timeout)


def _read_by_the_caller(reply: protocol.Reply | BaseException) -> None:
    """The sink in ``pending`` of a request whose thread reads its own replies.

    They come on another channel; the entry only shows the request is in flight.
    """


class _Waits:
    """How long a blocking call waits for each reply.

    The first reply: until the call's deadline (connecting and publishing used some of
    its timeout). Each later part of a streamed reply: the whole timeout again.
    """

    __slots__ = ("_first_deadline", "wait")

    def __init__(self, wait: float, first_deadline: float) -> None:
        self.wait = wait
        self._first_deadline: float | None = first_deadline

    def remaining(self) -> float:
        """Time left until the first reply's deadline (at least a moment)."""
        deadline = self._first_deadline
        if deadline is None:
            return self.wait
        return max(deadline - time.monotonic(), 0.001)

    def next(self) -> float:
        """How long to wait for the next reply."""
        if self._first_deadline is None:
            return self.wait
        remaining = self.remaining()
        self._first_deadline = None
        return remaining


async def _bounded(work: Awaitable[None], timeout: float, failure: str) -> None:
    """Await ``work``; past ``timeout``, raise TransportError saying ``failure``."""
    try:
        async with deadline(timeout):
            await work
    except asyncio.TimeoutError:
        raise TransportError(f"{failure}: no answer within {timeout}s") from None


class _NoReceiverError(Exception):
    """Internal: a request reached no subscriber."""


def _publish_request(
    transport: Transport, channel: str, data: bytes, put: Callable[[Any], None]
) -> None:
    """On the transport's loop: publish a request; tell ``put`` if nobody got it."""

    def published(outcome: Any) -> None:
        if isinstance(outcome, BaseException):
            put(outcome)
        elif outcome == 0:
            put(_NoReceiverError())

    try:
        transport.publish_then(channel, data, published)
    except Exception as exc:  # a transport closed under us
        put(exc)
