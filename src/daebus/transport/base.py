"""The transport interface: publish bytes to channels, deliver bytes from channels.

Request/reply, envelopes and dispatch live above this, so every transport gets them for
free. A transport belongs to one event loop; only :meth:`Transport.publish_blocking` may
be called from other threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from ..exceptions import TransportError
from ._replicas import DEFAULT_REPLICA_TIMEOUT_MS
from ._url import redact_url

if TYPE_CHECKING:
    import redis

__all__ = [
    "BatchEnd",
    "ChannelReader",
    "Delivery",
    "DeliveryHandler",
    "DisconnectHandler",
    "Reclaimed",
    "StreamEntry",
    "Subscription",
    "Transport",
]

logger = logging.getLogger(__name__)


#: The tasks of claims under way (see Transport.claim_then).
_claiming: set[asyncio.Task[None]] = set()


class Delivery(NamedTuple):
    """One message as it came off the wire (a named tuple: one is made per message)."""

    channel: str
    data: bytes
    #: The glob pattern that matched, for pattern subscriptions; None otherwise.
    pattern: str | None = None


class StreamEntry(NamedTuple):
    """One entry of a stream, as a consumer group hands it out."""

    id: str
    #: The entry's fields (``data`` holds a durable message's JSON).
    fields: dict[str, bytes]
    #: How many times the group has handed it out, this time included.
    deliveries: int


class Reclaimed(NamedTuple):
    """What ``XAUTOCLAIM`` took, and where its next look should start."""

    entries: list[StreamEntry]
    #: The id the scan stopped at, or ``"0-0"`` once it went over the whole pending list.
    next_start: str


#: Called on the transport's loop for each message. Returning an awaitable makes the
#: transport wait for it before reading the next message: that is how back-pressure
#: reaches the socket.
DeliveryHandler = Callable[[Delivery], Awaitable[None] | None]

#: Called on the transport's loop after each run of deliveries that arrived together
#: (the messages of one read from the socket), before the transport waits for anything
#: else: more data, or an awaitable a handler returned. See :meth:`Transport.add_batch_end`.
BatchEnd = Callable[[], None]


#: Called on the transport's loop when the connection that carries its subscriptions is
#: lost, with the error that says why. Messages published until it is back are missed:
#: whoever waits for one (a caller, for a reply) should not go on waiting.
DisconnectHandler = Callable[[TransportError], None]


class ChannelReader(Protocol):
    """A blocking subscription to one channel, read by one thread at a time."""

    channel: str

    def open(self, timeout: float | None = None) -> None:
        """Be connected and subscribed (reconnecting if need be); messages unread stay.

        ``timeout`` bounds each wait for the server (the reader's default if None).
        """

    def next_message(self, timeout: float) -> bytes | None:
        """The next message's data, or None if none comes within ``timeout`` seconds."""

    def close(self) -> None:
        """Close the connection (idempotent); :meth:`open` opens it again."""


class Subscription:
    """A handler subscribed to one channel or pattern; :meth:`unsubscribe` removes it."""

    __slots__ = ("_transport", "handler", "name", "pattern")

    def __init__(
        self, transport: Transport, name: str, pattern: bool, handler: DeliveryHandler
    ) -> None:
        self._transport = transport
        self.name = name
        self.pattern = pattern
        self.handler = handler

    async def unsubscribe(self) -> None:
        """Stop delivering to this handler (idempotent)."""
        await self._transport._remove_subscription(self)

    def __repr__(self) -> str:
        kind = "pattern" if self.pattern else "channel"
        return f"<Subscription {kind}={self.name!r}>"


class Transport(ABC):
    """Base of the transports; subclasses implement the wire-level operations."""

    #: True if the transport calls :meth:`_end_batch` after each run of deliveries. A
    #: transport that does not leaves its handlers to handle each message as it comes.
    ends_batches = False

    def __init__(self, url: str) -> None:
        self.url = url
        # (is_pattern, name) -> handlers, in subscription order. Internal.
        self._subscriptions: dict[tuple[bool, str], list[Subscription]] = {}
        self._batch_ends: list[BatchEnd] = []
        self._disconnect_handlers: list[DisconnectHandler] = []

    @property
    def shown_url(self) -> str:
        """The URL with its password masked: the one to put in logs and messages."""
        return redact_url(self.url)

    # -- lifecycle -------------------------------------------------------------------
    @abstractmethod
    async def connect(self) -> None:
        """Connect (idempotent). Raises :class:`~daebus.TransportError` if unreachable."""

    @abstractmethod
    async def close(self) -> None:
        """Drop every subscription and connection (idempotent)."""

    async def __aenter__(self) -> Transport:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- publishing ------------------------------------------------------------------
    async def publish(self, channel: str, data: bytes) -> int:
        """Publish one message; return how many subscribers received it."""
        return await self.publish_nowait(channel, data)

    @abstractmethod
    def publish_nowait(self, channel: str, data: bytes) -> asyncio.Future[int]:
        """Queue one message for publishing, on the transport's loop.

        Messages queued this way are published in the order they were queued; the
        future gives the receiver count.
        """

    def publish_then(self, channel: str, data: bytes, callback: Callable[[Any], None]) -> None:
        """Like :meth:`publish_nowait`; ``callback`` gets the count or the exception."""

        def done(future: asyncio.Future[int]) -> None:
            if future.cancelled():
                callback(TransportError("the message was not published: cancelled"))
            else:
                callback(future.exception() or future.result())

        self.publish_nowait(channel, data).add_done_callback(done)

    @abstractmethod
    def publish_blocking(self, channel: str, data: bytes, timeout: float | None = None) -> int:
        """Publish from a thread that is not the transport's loop; blocks until sent.

        ``timeout`` bounds the wait for the server (the transport's default if None);
        past it, :class:`~daebus.TransportError` is raised: the message may or may not
        have been published.
        """

    def publish_detached(self, channel: str, data: bytes) -> None:
        """Like :meth:`publish_blocking`, but need not wait for the receiver count."""
        self.publish_blocking(channel, data)

    def blocking_client(self) -> redis.Redis | None:
        """The app's ``cache``: a redis-py client on the server, ``decode_responses=True``.

        None for a transport without a Redis behind it.
        """
        return None

    def close_blocking(self) -> None:
        """Close the connections made for other threads and the blocking client."""
        return None  # a transport that makes none has nothing to close

    def channel_reader(self, channel: str) -> ChannelReader | None:
        """A blocking subscription to ``channel`` for other threads, if the transport has them.

        None by default: such a thread waits for what the transport's loop hands it.
        """
        return None

    def publish_many_blocking(self, messages: Sequence[tuple[str, bytes]]) -> list[int]:
        """:meth:`publish_many` from a thread that is not the transport's loop."""
        return [self.publish_blocking(channel, data) for channel, data in messages]

    async def publish_many(self, messages: Sequence[tuple[str, bytes]]) -> list[int]:
        """Publish several messages in order; return each one's receiver count."""
        return [await self.publish(channel, data) for channel, data in messages]

    # -- the instances of a service (see daebus.runtime.instances and .jobs) -----------
    async def claim(self, key: str, owner: str, ttl_ms: int) -> bool:
        """Take ``key`` for ``owner`` for ``ttl_ms`` ms if nobody holds it; True if taken.

        Atomic across every transport of the server (Redis's ``SET NX PX``): of several
        instances claiming one key, exactly one gets True.

        Raises:
            TransportError: the server cannot be reached or refuses the command.
            NotImplementedError: the transport has no claims.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot claim keys")

    def claim_then(
        self, key: str, owner: str, ttl_ms: int, callback: Callable[[bool | Exception], None]
    ) -> None:
        """Like :meth:`claim`; ``callback`` gets True or False, or the exception.

        For a claim made for every message: where it can, a transport sends it without
        a task, and calls back as the reply is read. By default, a task awaits
        :meth:`claim`.
        """

        async def claim() -> None:
            try:
                won = await self.claim(key, owner, ttl_ms)
            except Exception as exc:  # TransportError; NotImplementedError
                callback(exc)
            else:
                callback(won)

        task = asyncio.get_running_loop().create_task(claim())
        # The loop keeps only a weak reference to a task.
        _claiming.add(task)
        task.add_done_callback(_claiming.discard)

    async def renew_claim(self, key: str, owner: str, ttl_ms: int) -> bool:
        """Hold ``key`` ``ttl_ms`` ms more if ``owner`` still holds it; True if renewed.

        Atomic: a claim that expired and was taken by another owner meanwhile is left
        to it (False).

        Raises:
            TransportError: the server cannot be reached or refuses the command.
            NotImplementedError: the transport has no claims.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot claim keys")

    async def release_claim(self, key: str, owner: str) -> bool:
        """Drop ``key`` if ``owner`` still holds it (atomic, idempotent); True if dropped.

        Raises:
            TransportError: the server cannot be reached or refuses the command.
            NotImplementedError: the transport has no claims.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot claim keys")

    async def renew_member(self, key: str, member: str, ttl_ms: int) -> list[str]:
        """Mark ``member`` of the record ``key`` alive for ``ttl_ms`` ms more; list the live.

        Members whose time ran out are forgotten first; times are the server's, so the
        clocks of the members' hosts do not matter.

        Raises:
            TransportError: the server cannot be reached or refuses the commands.
            NotImplementedError: the transport has no membership records.
        """
        raise NotImplementedError(f"{type(self).__name__} keeps no membership records")

    async def remove_member(self, key: str, member: str) -> None:
        """Forget ``member`` of the record ``key`` at once (idempotent)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no membership records")

    # -- the service registry (see daebus.runtime.presence and daebus.registry) ----------
    async def put_entry(self, index: str, key: str, value: bytes, ttl_ms: int) -> None:
        """Keep ``value`` at ``key`` for ``ttl_ms`` ms, and list ``key`` in ``index``.

        ``SET key value PX ttl_ms``; the index is a sorted set of keys scored with their
        expiry on the server's clock, from which the expired ones are pruned as entries
        are put. Readers (:meth:`daebus._admin.Admin.entries`) skip keys that expired.

        Raises:
            TransportError: the server cannot be reached or refuses the commands.
            NotImplementedError: the transport has no such entries.
        """
        raise NotImplementedError(f"{type(self).__name__} keeps no registry entries")

    async def drop_entry(self, index: str, key: str) -> None:
        """Delete ``key`` and take it off ``index`` at once (idempotent)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no registry entries")

    # -- streams (durable channels: see daebus.runtime.durable) -------------------------
    # Redis's stream commands, with their semantics: the memory transport implements
    # the same. Each raises TransportError when the server refuses or cannot be reached,
    # and NotImplementedError for a transport without streams.
    async def stream_add(
        self,
        stream: str,
        fields: dict[str, bytes],
        maxlen: int,
        *,
        max_age_ms: int | None = None,
        replicas: int = 0,
        replica_timeout_ms: int = DEFAULT_REPLICA_TIMEOUT_MS,
    ) -> str:
        """``XADD stream MAXLEN ~ maxlen * fields...``: the new entry's id.

        The stream keeps about its last ``maxlen`` entries. With ``max_age_ms``, entries
        older than that are trimmed too (``XTRIM stream MINID ~ <now - max_age_ms>``), age
        being measured on the server's clock, as the ids are. Trimming is approximate
        (``~``): Redis removes whole nodes of the stream, so a few more may stay.

        With ``replicas``, ``WAIT replicas replica_timeout_ms`` follows on the same
        connection, and :class:`~daebus.exceptions.ReplicationError` is raised if fewer
        replicas acknowledged the entry in time (see :mod:`._replicas`).
        """
        raise NotImplementedError(f"{type(self).__name__} has no streams")

    def stream_add_blocking(
        self,
        stream: str,
        fields: dict[str, bytes],
        maxlen: int,
        *,
        max_age_ms: int | None = None,
        replicas: int = 0,
        replica_timeout_ms: int = DEFAULT_REPLICA_TIMEOUT_MS,
    ) -> str:
        """:meth:`stream_add` from a thread that is not the transport's loop."""
        raise NotImplementedError(f"{type(self).__name__} has no streams")

    def stream_add_many_blocking(
        self,
        entries: Sequence[tuple[str, dict[str, bytes]]],
        maxlen: int,
        *,
        max_age_ms: int | None = None,
        replicas: int = 0,
        replica_timeout_ms: int = DEFAULT_REPLICA_TIMEOUT_MS,
    ) -> list[str]:
        """:meth:`stream_add_blocking` for each ``(stream, fields)``: their ids, in order.

        A transport that can sends them in one round trip (and one ``WAIT``).
        """
        return [
            self.stream_add_blocking(
                stream,
                fields,
                maxlen,
                max_age_ms=max_age_ms,
                replicas=replicas,
                replica_timeout_ms=replica_timeout_ms,
            )
            for stream, fields in entries
        ]

    async def stream_create_group(self, stream: str, group: str, start: str) -> bool:
        """``XGROUP CREATE stream group start MKSTREAM``; False if the group existed."""
        raise NotImplementedError(f"{type(self).__name__} has no streams")

    async def stream_read(
        self, stream: str, group: str, consumer: str, count: int, block_ms: int
    ) -> list[StreamEntry]:
        """``XREADGROUP ... BLOCK block_ms STREAMS stream >``: entries new to the group.

        Waits at most ``block_ms`` for one; a transport reads on a connection of its own
        for each ``(stream, group)``, so the wait holds up nothing else.
        """
        raise NotImplementedError(f"{type(self).__name__} has no streams")

    async def stream_ack(
        self, stream: str, group: str, ids: Sequence[str], *, delete: bool = False
    ) -> int:
        """``XACK``: how many of ``ids`` were pending.

        With ``delete``, ``XDEL`` too, in the same round trip: for a stream whose entries
        are done with once one group has them (a service's durable requests).
        """
        raise NotImplementedError(f"{type(self).__name__} has no streams")

    async def stream_claim(
        self, stream: str, group: str, consumer: str, ids: Sequence[str], *, touch: bool = False
    ) -> list[StreamEntry]:
        """``XCLAIM stream group consumer 0 ids...``: take pending entries again.

        Each one's delivery count goes up by one. With ``touch``, ``JUSTID``: their idle
        time is reset and their count left alone (a claim extended); nothing is returned.
        """
        raise NotImplementedError(f"{type(self).__name__} has no streams")

    async def stream_leave_group(self, stream: str, group: str, consumer: str) -> bool:
        """Forget ``consumer`` of ``group`` if it holds no pending entry; True if forgotten.

        ``XGROUP DELCONSUMER``, only once ``XPENDING`` says it holds nothing: deleting
        one that does would leave its entries to nobody.
        """
        raise NotImplementedError(f"{type(self).__name__} has no streams")

    async def stream_pending_elsewhere(self, stream: str, group: str, consumer: str) -> int:
        """How many of ``group``'s pending entries members other than ``consumer`` hold.

        ``XPENDING``'s summary: 0 means no other member left anything to take over.
        """
        raise NotImplementedError(f"{type(self).__name__} has no streams")

    async def stream_autoclaim(
        self,
        stream: str,
        group: str,
        consumer: str,
        min_idle_ms: int,
        count: int,
        *,
        start: str = "0-0",
    ) -> Reclaimed:
        """``XAUTOCLAIM``: take up to ``count`` entries pending ``min_idle_ms`` or more.

        Looks at the pending entries from id ``start`` on, at most ten times ``count`` of
        them (as Redis does), and says where the next look should start. Entries deleted
        from the stream meanwhile are dropped from the pending list.
        """
        raise NotImplementedError(f"{type(self).__name__} has no streams")

    # -- subscribing -----------------------------------------------------------------
    async def subscribe(
        self, name: str, handler: DeliveryHandler, *, pattern: bool = False
    ) -> Subscription:
        """Deliver messages on channel (or glob pattern) ``name`` to ``handler``.

        Several handlers may share a channel; each gets every message.
        """
        subscription = Subscription(self, name, pattern, handler)
        key = (pattern, name)
        handlers = self._subscriptions.setdefault(key, [])
        handlers.append(subscription)
        if len(handlers) == 1:
            try:
                await self._add(name, pattern)
            except BaseException:
                self._subscriptions.pop(key, None)
                raise
        return subscription

    async def _remove_subscription(self, subscription: Subscription) -> None:
        key = (subscription.pattern, subscription.name)
        handlers = self._subscriptions.get(key)
        if not handlers or subscription not in handlers:
            return
        handlers.remove(subscription)
        if not handlers:
            del self._subscriptions[key]
            await self._remove(subscription.name, subscription.pattern)

    @abstractmethod
    async def _add(self, name: str, pattern: bool) -> None:
        """Start receiving a channel or pattern on the wire."""

    @abstractmethod
    async def _remove(self, name: str, pattern: bool) -> None:
        """Stop receiving a channel or pattern on the wire."""

    def add_batch_end(self, callback: BatchEnd) -> None:
        """Call ``callback`` after each run of deliveries that arrived together.

        A handler may then queue the messages it is given and handle them all at the
        batch's end, in one task instead of one task each. A transport that
        :attr:`ends_batches` calls it before it waits for more data or for an awaitable
        a handler returned, so nothing queued waits for the next message.
        """
        self._batch_ends.append(callback)

    def remove_batch_end(self, callback: BatchEnd) -> None:
        """Stop calling ``callback`` (idempotent)."""
        with contextlib.suppress(ValueError):
            self._batch_ends.remove(callback)

    @property
    def receiving(self) -> bool:
        """False while the connection carrying the subscriptions is being re-made.

        Messages published meanwhile are missed: a caller waits for it to be back
        (:meth:`until_receiving`) before it sends a request whose reply it wants.
        """
        return True

    async def until_receiving(self) -> None:
        """Return once :attr:`receiving` (cancel it to give up waiting)."""
        return None  # always receiving, unless a transport says otherwise

    def add_disconnect_handler(self, callback: DisconnectHandler) -> None:
        """Call ``callback`` each time the connection carrying the subscriptions is lost."""
        self._disconnect_handlers.append(callback)

    def remove_disconnect_handler(self, callback: DisconnectHandler) -> None:
        """Stop calling ``callback`` (idempotent)."""
        with contextlib.suppress(ValueError):
            self._disconnect_handlers.remove(callback)

    def _disconnected(self, error: TransportError) -> None:
        """Tell the disconnect handlers; never raises."""
        for callback in tuple(self._disconnect_handlers):
            try:
                callback(error)
            except Exception:
                logger.exception("disconnect handler %r failed", callback)

    def _end_batch(self) -> None:
        """Call the batch-end callbacks; never raises."""
        for callback in self._batch_ends:
            try:
                callback()
            except Exception:
                logger.exception("batch-end callback %r failed", callback)

    def _deliver(self, delivery: Delivery) -> Awaitable[None] | None:
        """Hand one message to its handlers; never raises."""
        key = (delivery.pattern is not None, delivery.pattern or delivery.channel)
        subscriptions = self._subscriptions.get(key)
        if subscriptions is not None and len(subscriptions) == 1:  # the common case
            try:
                return subscriptions[0].handler(delivery)
            except Exception:
                logger.exception("handler for %s failed", delivery.channel)
                return None
        pending: list[Awaitable[None]] = []
        for subscription in tuple(subscriptions or ()):
            try:
                result = subscription.handler(delivery)
            except Exception:
                logger.exception("handler for %s failed", delivery.channel)
                continue
            if result is not None:
                pending.append(result)
        if not pending:
            return None
        if len(pending) == 1:
            return pending[0]
        return _wait_all(pending)


async def _wait_all(pending: list[Awaitable[None]]) -> None:
    for awaitable in pending:
        await awaitable
