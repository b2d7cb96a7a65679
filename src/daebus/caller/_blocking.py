"""DaebusCaller: calls one service from ordinary (threaded) code.

It drives an :class:`~daebus.AsyncDaebusCaller` (its core) on the portal, a background
event loop shared by every blocking caller of the process, and picks for each call one of
the two reply paths of :mod:`._reply_paths`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .. import protocol, tracing as _tracing
from .._flow import published
from .._portal import get_portal
from ..encoding import dumps
from ..pubsub import DEFAULT_MAX_MESSAGE_SIZE
from ..transport import Transport
from ..transport._url import redact_url
from . import _messages
from ._async import AsyncDaebusCaller, durable_ttl
from ._reply_paths import OwnConnection, RoutedByPortal, bounded, time_left

if TYPE_CHECKING:
    import redis
    from opentelemetry.trace import TracerProvider

__all__ = ["DaebusCaller"]


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

    ``tracing`` and ``tracer_provider``: as for :class:`~daebus.AsyncDaebusCaller`; by
    default a call made in a handler of a service that traces is traced, in the
    handler's trace (plain ``def`` handlers included: they run in a copy of the
    handler's context).
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
        tracing: bool | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self._core = AsyncDaebusCaller(
            target_service,
            redis_url=redis_url,
            redis_host=redis_host,
            redis_port=redis_port,
            timeout=timeout,
            max_message_size=max_message_size,
            tracing=tracing,
            tracer_provider=tracer_provider,
        )
        self.target_service = target_service
        self.response_channel = self._core.response_channel
        self.logger = self._core.logger
        self.pending_requests = self._core.pending
        # The caller's own reply connection, on its own reply channel, for a thread that
        # calls while no other does (see _start); made for the transport it reads from.
        # Whoever holds the lane lock uses it.
        self._own: OwnConnection | None = None
        self._own_transport: Transport | None = None
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
    def redis(self) -> redis.Redis | None:
        """A redis-py client on the caller's server (connects the caller)."""
        return self._transport().blocking_client()

    def connect(self) -> DaebusCaller:
        """Connect now rather than on first use. Raises ``TransportError``."""
        self._transport()
        return self

    def _transport(self, timeout: float | None = None) -> Transport:
        transport = self._core.transport  # None until connected
        if transport is None:
            transport = self._connect(timeout or self._core.timeout)
        return transport

    def _connect(self, timeout: float) -> Transport:
        core = self._core
        # Resolve here, in the calling thread, where the app context is visible.
        url = core.resolve_url()
        failure = f"cannot connect to {redact_url(url)}"
        get_portal().call(bounded(core.connect(url), timeout, failure))
        transport = core.transport
        assert transport is not None
        return transport

    def close(self) -> None:
        """Release the connection; the caller reconnects if it is used again."""
        self._close_lane()
        if self._core.connected or self._core.transport is not None:
            get_portal().call(self._core.aclose())

    def _close_lane(self) -> None:
        if self._lane_lock.acquire(blocking=False):  # else a request uses it: it stays
            try:
                own, self._own, self._own_transport = self._own, None, None
                if own is not None:
                    own.close()
            finally:
                self._lane_lock.release()

    def __enter__(self) -> DaebusCaller:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _start(
        self,
        action: str,
        payload: Any,
        timeout: float | None,
        ttl: float | None = None,
        trace: dict[str, str] | None = None,
    ) -> tuple[OwnConnection | RoutedByPortal, bool]:
        """Publish a request; return the call, and ``alone``.

        ``alone``: the call has the caller's own reply connection (from the caller's
        second request on: see :meth:`_own_connection`), read by this thread. Requests
        made while others are in flight go through the portal, which reads the replies
        of them all. The caller is in use from here until :meth:`_finish` (or a failure
        here). Connecting, publishing and waiting for the first reply share one
        deadline, ``timeout`` from now.
        """
        core = self._core
        # Counted in before looking at the connection: close() now waits for us.
        alone = core.begin_use() == 0 and self._lane_lock.acquire(blocking=False)
        call: OwnConnection | RoutedByPortal | None = None
        try:
            wait = timeout or core.timeout
            deadline_at = time.monotonic() + wait
            transport = core.transport
            if transport is not None:
                # The whole timeout when no connect took part of it: the same value call
                # after call, so that the socket keeps the timeout it has.
                publish_wait = wait
            else:
                transport = self._connect(wait)
                publish_wait = time_left(deadline_at)
            if alone:
                call = self._own
                if call is None or self._own_transport is not transport:
                    call = self._own_connection(transport)
                if call is None:  # a first request, or a transport without such connections
                    self._lane_lock.release()
                    alone = False
            if call is None:
                call = RoutedByPortal(core)
            payload = {} if payload is None else payload
            call.start(transport, action, payload, wait, deadline_at, publish_wait, ttl, trace)
            return call, alone
        except BaseException:
            self._finish(call, alone)
            raise

    def _own_connection(self, transport: Transport) -> OwnConnection | None:
        """The caller's own reply connection on ``transport`` (hold the lane lock).

        None for the first request on a transport: a caller used once (made and closed
        around one call) does not pay for a connection of its own.
        """
        if self._own_transport is not transport:
            if self._own is not None:
                self._own.close()
            self._own, self._own_transport = None, transport
            return None
        if self._own is None:
            lane = transport.channel_reader(protocol.new_reply_channel())
            if lane is not None:
                self._own = OwnConnection(self._core, lane)
        return self._own

    def _finish(self, call: OwnConnection | RoutedByPortal | None, alone: bool) -> None:
        """The request is over: forget its id, and the caller is no longer in use for it."""
        if call is not None:
            self._core.pending.pop(call.request_id, None)
        if alone:
            self._lane_lock.release()
        if self._core.end_use():
            self._close_now()

    def _end_use(self) -> None:
        if self._core.end_use():
            self._close_now()

    def _close_now(self) -> None:
        """Carry out a close() deferred until the caller's last request ended."""
        self._close_lane()
        try:
            get_portal().call(self._core.aclose())
        except Exception:
            self.logger.exception("closing the caller after its last request failed")

    @contextlib.contextmanager
    def _in_use(self) -> Iterator[None]:
        self._core.begin_use()  # before looking at the connection: close() now waits for us
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
        *,
        durable: bool = False,
        ttl: float | None = None,
    ) -> Any:
        """Call ``action`` and return the final reply's payload.

        ``on_progress`` gets the payload of each streamed part, in this thread.
        ``timeout`` bounds the call: connecting, sending and the first reply, then each
        next part of a streamed reply; None or 0 means the caller's default.

        ``durable=True`` leaves the request on the service's request stream rather than
        publishing it: it waits there while no instance of the service runs, is run
        once by one of them (again by another if that one dies), and is dropped unrun
        once ``ttl`` seconds (by default the timeout) have passed. See docs/durable.md.

        Raises:
            RemoteError: the service answered with an error (``str(e)`` is its message).
            ServiceBusyError: the service refused the request unrun (full, or stopping).
            CallTimeoutError: no reply in time (a ``TimeoutError``).
            ServiceUnavailableError: no service is subscribed to the channel.
            ConnectionLostError: the connection dropped while the call waited.
            TransportError: the server cannot be reached or did not answer in time.
        """
        ttl = durable_ttl(durable, ttl)
        traced = self._core.trace_call(action, durable) if _tracing.in_use else None
        if traced is None:
            return self._request(action, payload, timeout, on_progress, ttl, None)
        with traced:
            return self._request(action, payload, timeout, on_progress, ttl, traced.headers)

    def _request(
        self,
        action: str,
        payload: Any,
        timeout: float | None,
        on_progress: Callable[[Any], Any] | None,
        ttl: float | None,
        trace: dict[str, str] | None,
    ) -> Any:
        call, alone = self._start(action, payload, timeout, ttl, trace)
        try:
            reply = call.next_reply()
            while not reply.final:
                if on_progress is not None:
                    try:
                        on_progress(reply.payload)
                    except Exception:
                        self.logger.exception("on_progress callback failed")
                reply = call.next_reply()
        finally:
            self._finish(call, alone)
        if reply.is_error:
            _messages.fail_with(self.target_service, action, reply)
        return reply.payload

    def stream(
        self,
        action: str,
        payload: Any = None,
        timeout: float | None = None,
        *,
        durable: bool = False,
        ttl: float | None = None,
    ) -> Iterator[Any]:
        """Call ``action`` and yield each part of the reply, the final one last.

        ``durable`` and ``ttl``: as for :meth:`send_request`.
        """
        ttl = durable_ttl(durable, ttl)
        traced = self._core.trace_call(action, durable) if _tracing.in_use else None
        if traced is None:
            yield from self._stream(action, payload, timeout, ttl, None)
            return
        with traced:
            yield from self._stream(action, payload, timeout, ttl, traced.headers)

    def _stream(
        self,
        action: str,
        payload: Any,
        timeout: float | None,
        ttl: float | None,
        trace: dict[str, str] | None,
    ) -> Iterator[Any]:
        call, alone = self._start(action, payload, timeout, ttl, trace)
        try:
            while True:
                reply = call.next_reply()
                if reply.final:
                    break
                yield reply.payload
        finally:
            self._finish(call, alone)
        if reply.is_error:
            _messages.fail_with(self.target_service, action, reply)
        yield reply.payload

    def send_message(self, channel: str, payload: Any) -> int:
        """Publish ``payload`` on any ``channel``; returns the receiver count.

        If nobody listens on ``channel``, the message goes to the target service as a
        fire-and-forget request for the action named ``channel`` (as the docs of 0.0.31
        used it).
        """
        with self._in_use():
            transport = self._transport()
            data = dumps(payload)
            published(channel, data, False)
            count = transport.publish_blocking(channel, data, self.timeout)
            if count == 0 and channel != self.target_service:
                count = transport.publish_blocking(
                    protocol.service_channel(self.target_service),
                    self._core.encode_fire_and_forget(channel, payload),
                    self.timeout,
                )
            return count

    def send_to_service(self, payload: Any, action: str | None = None) -> int:
        """Send a fire-and-forget request for ``action`` (no reply is awaited)."""
        core = self._core
        data = core.encode_fire_and_forget(action, payload) if action else dumps(payload)
        with self._in_use():
            transport = self._transport()
            channel = protocol.service_channel(self.target_service)
            return transport.publish_blocking(channel, data, self.timeout)
