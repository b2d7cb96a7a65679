"""The two ways a blocking call gets its replies, each a small object with one job.

- :class:`OwnConnection`: the calling thread publishes, then reads the replies itself
  from a connection of the caller's own, subscribed to a reply channel of its own, as a
  hand-written loop would: no hop to another thread and back. For a thread that calls
  while no other thread uses the caller.
- :class:`RoutedByPortal`: the portal's event loop, which holds the caller's shared reply
  subscription, routes the replies to a queue the calling thread waits on. The request
  is published by the calling thread when the call is alone, else by the portal, which
  pipelines the requests of every thread.

Either way a call's first reply is awaited until the call's deadline (connecting and
publishing used part of its timeout) and each later part of a streamed reply for the
whole timeout again.
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .. import protocol
from .._compat import timeout as deadline
from .._portal import get_portal
from ..exceptions import ConnectionLostError, TransportError
from ..transport import ChannelReader, Transport
from . import _messages
from ._async import AsyncDaebusCaller

__all__ = ["OwnConnection", "RoutedByPortal", "bounded", "send_durable", "time_left"]


def time_left(deadline_at: float) -> float:
    """Time left until ``deadline_at`` (at least a moment: a reply already there is read)."""
    left = deadline_at - time.monotonic()
    return left if left > 0.001 else 0.001


async def bounded(work: Awaitable[None], timeout: float, failure: str) -> None:
    """Await ``work``; past ``timeout``, raise TransportError saying ``failure``."""
    try:
        async with deadline(timeout):
            await work
    except asyncio.TimeoutError:
        raise TransportError(f"{failure}: no answer within {timeout}s") from None


class OwnConnection:
    """The caller's own reply connection, and the call that uses it (one at a time).

    Made once for a caller's lane and used by each of its calls in turn (the caller's
    lane lock says whose turn it is): a call publishes from its thread, then reads its
    replies on the lane.
    """

    __slots__ = (
        "_action",
        "_core",
        "_durable",
        "_first_deadline",
        "_service_channel",
        "_wait",
        "lane",
        "request_id",
    )

    def __init__(self, core: AsyncDaebusCaller, lane: ChannelReader) -> None:
        self._core = core
        self.lane = lane
        self._service_channel = protocol.service_channel(core.target_service)
        self.request_id = ""
        self._action = ""
        self._durable = False
        self._wait = 0.0
        self._first_deadline: float | None = None

    def start(
        self,
        transport: Transport,
        action: str,
        payload: Any,
        wait: float,
        deadline_at: float,
        publish_wait: float,
        ttl: float | None = None,
        trace: dict[str, str] | None = None,
    ) -> None:
        """Publish a request; ServiceUnavailableError if it reached no one.

        Its first reply is awaited until ``deadline_at``, each later part of a streamed
        reply for ``wait`` again. With a ``ttl`` the request is durable: it goes on the
        service's request stream instead (see :func:`send_durable`).
        """
        core, lane = self._core, self.lane
        self.request_id = request_id = protocol.new_request_id()
        self._action = action
        self._wait = wait
        self._durable = ttl is not None
        self._first_deadline = deadline_at
        data = _messages.encode_request(
            core.target_service,
            action,
            payload,
            lane.channel,
            request_id,
            core.max_message_size,
            trace,
        )
        lane.open(publish_wait)
        # Its replies come on the lane: the entry only shows the request is in flight.
        core.pending[request_id] = _read_on_the_lane
        if ttl is not None:
            send_durable(transport, core.target_service, data, ttl or wait)
        elif transport.publish_blocking(self._service_channel, data, publish_wait) == 0:
            raise _messages.unavailable(core.target_service, action)

    def next_reply(self) -> protocol.Reply:
        """The next reply to the request, read from the lane in this thread."""
        core, lane = self._core, self.lane
        now = time.monotonic()
        deadline_at = self._first_deadline
        if deadline_at is None:
            deadline_at = now + self._wait
            remaining = self._wait
        else:
            self._first_deadline = None
            remaining = deadline_at - now
            if remaining < 0.001:  # at least a moment: a reply already there is read
                remaining = 0.001
        while remaining > 0:
            try:
                data = lane.next_message(remaining)
            except TransportError as exc:
                raise _messages.connection_lost(core.target_service, self._action, exc) from exc
            if data is None:
                break
            reply = _messages.decode_reply(core.logger, lane.channel, data)
            if reply is not None:
                if reply.request_id == self.request_id:
                    _messages.log_reply(core.target_service, reply)
                    return reply
                # A late reply to an earlier request that timed out.
                core.logger.debug("ignored a reply for unknown request %r", reply.request_id)
            remaining = deadline_at - time.monotonic()
        raise _timed_out(core.target_service, self._action, self._wait, self._durable)

    def close(self) -> None:
        """Close the connection (it opens again if used)."""
        self.lane.close()


class RoutedByPortal:
    """A call whose replies the portal's loop routes to a queue this thread waits on."""

    def __init__(self, core: AsyncDaebusCaller) -> None:
        self._core = core
        self.request_id = protocol.new_request_id()
        self._replies: queue.SimpleQueue[protocol.Reply | BaseException] = queue.SimpleQueue()

    def start(
        self,
        transport: Transport,
        action: str,
        payload: Any,
        wait: float,
        deadline_at: float,
        publish_wait: float,
        ttl: float | None = None,
        trace: dict[str, str] | None = None,
    ) -> None:
        """Publish the request: from this thread if it is the only call, else by the portal.

        Its first reply is awaited until ``deadline_at``, each later part of a streamed
        reply for ``wait`` again. With a ``ttl`` the request is durable: this thread puts
        it on the service's request stream (see :func:`send_durable`).
        """
        core = self._core
        self._action = action
        self._wait = wait
        self._durable = ttl is not None
        self._first_deadline: float | None = deadline_at
        if not transport.receiving:  # the portal would miss a reply sent now
            get_portal().call(
                bounded(
                    transport.until_receiving(),
                    time_left(deadline_at),
                    f"cannot resubscribe at {transport.shown_url}",
                )
            )
        data = core.encode_request(action, payload, self.request_id, trace=trace)
        core.pending[self.request_id] = self._replies.put
        channel = protocol.service_channel(core.target_service)
        if ttl is not None:
            send_durable(transport, core.target_service, data, ttl or wait)
        elif core.in_flight == 1:
            # Alone: publish from this thread; a hop to the portal's loop would cost
            # more than the round trip.
            if transport.publish_blocking(channel, data, publish_wait) == 0:
                raise _messages.unavailable(core.target_service, action)
        else:
            # Published by the portal's loop, which pipelines the requests of every
            # thread; this one only wakes up for replies (or a failure).
            get_portal().call_soon_batched(
                _publish_request, transport, channel, data, self._replies.put
            )

    def next_reply(self) -> protocol.Reply:
        """The next reply to the request, as the portal hands it over."""
        service, action = self._core.target_service, self._action
        deadline_at, self._first_deadline = self._first_deadline, None
        wait = self._wait if deadline_at is None else time_left(deadline_at)
        try:
            reply = self._replies.get(timeout=wait)
        except queue.Empty:
            raise _timed_out(service, action, self._wait, self._durable) from None
        if isinstance(reply, BaseException):
            if isinstance(reply, _NoReceiverError):
                raise _messages.unavailable(service, action)
            if isinstance(reply, ConnectionLostError):
                raise _messages.connection_lost(service, action, reply) from reply
            raise reply
        return reply


def _timed_out(service: str, action: str, wait: float, durable: bool) -> Exception:
    if durable:
        return _messages.durable_timed_out(service, action, wait)
    return _messages.timed_out(service, action, wait)


def send_durable(transport: Transport, service: str, data: bytes, ttl: float) -> None:
    """Put a request on ``service``'s request stream, to be dropped after ``ttl`` seconds."""
    transport.stream_add_blocking(
        protocol.request_stream_key(service),
        _messages.durable_entry(data, ttl),
        protocol.DEFAULT_STREAM_MAXLEN,
    )


def _read_on_the_lane(reply: protocol.Reply | BaseException) -> None:
    """The entry in ``pending`` of a request whose thread reads its own replies."""


class _NoReceiverError(Exception):
    """A request reached no subscriber."""


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
