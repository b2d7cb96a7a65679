"""In-process pub/sub (``memory://``): Redis's semantics without a server.

Every transport of one URL in a process shares one :class:`MemoryBroker`, so a service
and its callers in one process (a unit test, a single-process app) talk through it:
``memory://`` is the default broker, ``memory://<name>`` a broker of its own.

It behaves as Redis pub/sub does, so that code tested on it behaves the same on Redis:

- a publish returns the receiver count as Redis counts it: one per subscribed transport
  for the channel, plus one per matching pattern subscription of each transport;
- patterns are Redis's globs (see :mod:`daebus.transport._glob`);
- messages reach each subscriber in the order they were published, on the subscriber's
  own event loop (transports may live on different loops and threads);
- a subscriber hands one message at a time to its handlers and waits for what they
  return before the next one, as the Redis reader does (the back-pressure);
- a closed or unsubscribed transport is neither sent nor counted.

Unlike Redis, a slow subscriber's queue is not capped: nothing is ever dropped.
The claims and membership records that instances of one service share requests and
jobs with, and the entries of the service registry, behave as their Redis commands do,
on the process's monotonic clock (:mod:`._memory_records`). The broker's key-value side
(``app.cache``) is a ``fakeredis`` server, when installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..exceptions import TransportError
from ._glob import compile_glob
from ._memory_records import MemoryRecords
from ._memory_streams import MemoryStreams
from ._replicas import DEFAULT_REPLICA_TIMEOUT_MS, check_acknowledged
from .base import Delivery, DeliveryHandler, Reclaimed, StreamEntry, Subscription, Transport

if TYPE_CHECKING:
    import fakeredis
    import redis

__all__ = ["MemoryBroker", "MemoryTransport", "Published", "broker_for", "forget"]

logger = logging.getLogger(__name__)

SCHEME = "memory://"


@dataclass(frozen=True, slots=True)
class Published:
    """One message as a broker monitor sees it (see :meth:`MemoryBroker.monitor`)."""

    channel: str
    data: bytes
    #: The transport that published it (None when published by no transport).
    publisher: MemoryTransport | None
    #: How many subscriptions received it.
    receivers: int


Monitor = Callable[[Published], None]


class MemoryBroker:
    """An in-process pub/sub server: the channels and patterns of its transports.

    Thread-safe: transports on any loop or thread publish and subscribe through it.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        # Insertion-ordered sets (dicts) of subscribed transports.
        self._channels: dict[str, dict[MemoryTransport, None]] = {}
        self._patterns: dict[str, tuple[Callable[[bytes], bool], dict[MemoryTransport, None]]] = {}
        self._monitors: list[Monitor] = []
        self._cache_server: fakeredis.FakeServer | None = None
        #: Claims, membership records and registry entries (see :mod:`._memory_records`).
        self.records = MemoryRecords()
        #: The streams of durable channels (see :mod:`._memory_streams`).
        self.streams = MemoryStreams()

    def __repr__(self) -> str:
        return f"<MemoryBroker {self.name!r}>"

    @property
    def url(self) -> str:
        """The URL naming this broker."""
        return SCHEME + self.name

    # -- subscriptions ---------------------------------------------------------------
    def subscribe(self, transport: MemoryTransport, name: str, pattern: bool) -> None:
        """Let ``transport`` receive channel (or glob pattern) ``name``."""
        with self._lock:
            if pattern:
                entry = self._patterns.get(name)
                if entry is None:
                    entry = self._patterns[name] = (compile_glob(name), {})
                entry[1][transport] = None
            else:
                self._channels.setdefault(name, {})[transport] = None

    def unsubscribe(self, transport: MemoryTransport, name: str, pattern: bool) -> None:
        """Stop ``transport`` receiving channel (or pattern) ``name`` (idempotent)."""
        with self._lock:
            self._unsubscribe_locked(transport, name, pattern)

    def _unsubscribe_locked(self, transport: MemoryTransport, name: str, pattern: bool) -> None:
        if pattern:
            entry = self._patterns.get(name)
            if entry is not None:
                entry[1].pop(transport, None)
                if not entry[1]:
                    del self._patterns[name]
        else:
            subscribers = self._channels.get(name)
            if subscribers is not None:
                subscribers.pop(transport, None)
                if not subscribers:
                    del self._channels[name]

    def drop(self, transport: MemoryTransport) -> None:
        """Remove every subscription of ``transport`` (it closed)."""
        with self._lock:
            self._drop_locked(transport)

    def _drop_locked(self, transport: MemoryTransport) -> None:
        for name in [name for name, subs in self._channels.items() if transport in subs]:
            self._unsubscribe_locked(transport, name, False)
        for name in [name for name, (_, subs) in self._patterns.items() if transport in subs]:
            self._unsubscribe_locked(transport, name, True)

    def numsub(self, channel: str) -> int:
        """How many transports subscribe to ``channel`` (Redis's ``PUBSUB NUMSUB``)."""
        with self._lock:
            return len(self._channels.get(channel, ()))

    def numpat(self) -> int:
        """How many distinct patterns are subscribed (Redis's ``PUBSUB NUMPAT``)."""
        with self._lock:
            return len(self._patterns)

    def channel_names(self) -> list[str]:
        """The channels with a subscriber (Redis's ``PUBSUB CHANNELS``), sorted."""
        with self._lock:
            return sorted(self._channels)

    # -- publishing ------------------------------------------------------------------
    def publish(self, channel: str, data: bytes, publisher: MemoryTransport | None = None) -> int:
        """Queue ``data`` for every subscriber of ``channel``; return the receiver count.

        Runs in the caller's thread; the subscribers receive it on their own loops.
        """
        data = _to_bytes(data)
        encoded = channel.encode("utf-8")
        count = 0
        gone: list[MemoryTransport] = []
        # One lock for every publish: each subscriber's queue gets messages in one
        # global order, so every publisher's messages keep theirs.
        with self._lock:
            subscribers = self._channels.get(channel)
            if subscribers:
                delivery = Delivery(channel, data)
                for transport in subscribers:
                    if transport._enqueue(delivery):
                        count += 1
                    else:
                        gone.append(transport)
            for pattern, (matches, pattern_subscribers) in self._patterns.items():
                if matches(encoded):
                    delivery = Delivery(channel, data, pattern)
                    for transport in pattern_subscribers:
                        if transport._enqueue(delivery):
                            count += 1
                        else:
                            gone.append(transport)
            for transport in gone:
                self._drop_locked(transport)
            if self._monitors:
                published = Published(channel, data, publisher, count)
                for monitor in tuple(self._monitors):
                    try:
                        monitor(published)
                    except Exception:
                        logger.exception("memory broker monitor %r failed", monitor)
        return count

    def monitor(self, callback: Monitor) -> Callable[[], None]:
        """Call ``callback`` with every message published from now on, like ``MONITOR``.

        It runs in the publishing thread, inside the broker's lock, in publish order: it
        must be quick and must not publish. Returns a function that removes it.
        """
        with self._lock:
            self._monitors.append(callback)

        def remove() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._monitors.remove(callback)

        return remove

    # -- the key-value side ----------------------------------------------------------
    def cache_server(self) -> fakeredis.FakeServer:
        """The broker's fakeredis server (created on first use).

        Raises:
            ImportError: fakeredis is not installed.
        """
        with self._lock:
            if self._cache_server is None:
                try:
                    import fakeredis
                except ImportError as exc:
                    raise ImportError(
                        "the cache of a memory:// transport needs fakeredis: "
                        "pip install 'daebus[testing]'"
                    ) from exc
                self._cache_server = fakeredis.FakeServer()
            return self._cache_server


def _to_bytes(data: Any) -> bytes:
    # What redis-py's encoder accepts, so both transports take the same values.
    if type(data) is bytes:
        return data
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, int | float) and not isinstance(data, bool):
        return repr(data).encode("utf-8")
    raise TypeError(f"cannot publish a {type(data).__name__}: expected bytes or str")


_brokers: dict[str, MemoryBroker] = {}
_brokers_lock = threading.Lock()


def _name(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "memory":
        raise ValueError(f"not a memory:// URL: {url!r}")
    return rest


def broker_for(url: str) -> MemoryBroker:
    """The process's broker for a ``memory://`` URL (created on first use)."""
    name = _name(url)
    with _brokers_lock:
        broker = _brokers.get(name)
        if broker is None:
            broker = _brokers[name] = MemoryBroker(name)
        return broker


def forget(url: str) -> None:
    """Drop the broker of ``url`` and its cache; the next use of ``url`` gets a new one.

    Transports still open on the old broker keep talking among themselves.
    """
    with _brokers_lock:
        _brokers.pop(_name(url), None)


class MemoryTransport(Transport):
    """Pub/sub through the in-process broker its ``memory://`` URL names."""

    ends_batches = True  # the messages queued when the reader looks

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.broker = broker_for(url)
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: deque[Delivery] = deque()
        self._reader_started: asyncio.Event | None = None
        self._wake_pending = False
        self._delivering = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._reader: asyncio.Task[None] | None = None
        self._cache: redis.Redis | None = None
        self._cache_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<MemoryTransport {self.url}>"

    # -- lifecycle -------------------------------------------------------------------
    async def connect(self) -> None:
        """Attach to the running loop (idempotent); there is nothing to reach."""
        self._closed = False
        self._bind()

    def _bind(self) -> asyncio.AbstractEventLoop:
        if self._closed:
            raise TransportError(f"{self!r} is closed")
        if self._loop is None or self._loop.is_closed():
            if self._loop is not None:
                # Its loop ended without closing us: what was subscribed there is gone.
                self._subscriptions.clear()
                self.broker.drop(self)
            self._reset()
            self._loop = asyncio.get_running_loop()
            self._reader_started = asyncio.Event()
        return self._loop

    def _reset(self) -> None:
        self._reader = None
        self._inbox.clear()
        self._delivering = self._wake_pending = False
        self._release_drain_waiters()

    async def close(self) -> None:
        """Drop every subscription and queued message (idempotent)."""
        self._closed = True
        self._subscriptions.clear()
        self.broker.drop(self)  # after this, nothing more is queued for us
        reader, self._reader = self._reader, None
        if (
            reader is not None
            and self._loop is asyncio.get_running_loop()
            and reader is not asyncio.current_task()  # closed by one of its own handlers
        ):
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self._reset()
        self._loop = self._reader_started = None
        with self._cache_lock:
            cache, self._cache = self._cache, None
        if cache is not None:
            cache.close()

    # -- publishing ------------------------------------------------------------------
    def publish_nowait(self, channel: str, data: bytes) -> asyncio.Future[int]:
        """Publish at once; the future is already done with the receiver count."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_exception(TransportError(f"{self!r} is closed"))
        else:
            future.set_result(self.broker.publish(channel, data, self))
        return future

    def publish_blocking(self, channel: str, data: bytes, timeout: float | None = None) -> int:
        """Publish from any thread (the broker is thread-safe); never blocks for long."""
        return self.broker.publish(channel, data, self)

    async def claim(self, key: str, owner: str, ttl_ms: int) -> bool:
        """Take ``key`` on the broker if nobody holds it (``SET NX PX``)."""
        self._check_open()
        return self.broker.records.claim(key, ttl_ms, owner)

    async def renew_claim(self, key: str, owner: str, ttl_ms: int) -> bool:
        """Hold ``key`` on the broker ``ttl_ms`` ms more if ``owner`` still holds it."""
        self._check_open()
        return self.broker.records.renew_claim(key, owner, ttl_ms)

    async def release_claim(self, key: str, owner: str) -> bool:
        """Drop ``key`` on the broker if ``owner`` still holds it."""
        self._check_open()
        return self.broker.records.release_claim(key, owner)

    async def renew_member(self, key: str, member: str, ttl_ms: int) -> list[str]:
        """Keep ``member`` of the broker's record ``key`` alive; list the live members."""
        self._check_open()
        return self.broker.records.renew_member(key, member, ttl_ms)

    async def remove_member(self, key: str, member: str) -> None:
        """Forget ``member`` of the broker's record ``key``."""
        self._check_open()
        self.broker.records.remove_member(key, member)

    async def put_entry(self, index: str, key: str, value: bytes, ttl_ms: int) -> None:
        """Keep ``value`` at ``key`` on the broker for ``ttl_ms`` ms, listed in ``index``."""
        self._check_open()
        self.broker.records.put_entry(index, key, value, ttl_ms)

    async def drop_entry(self, index: str, key: str) -> None:
        """Delete ``key`` on the broker and take it off ``index``."""
        self._check_open()
        self.broker.records.drop_entry(index, key)

    # Streams: the broker's (see ._memory_streams), as the Redis commands behave.
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
        """``XADD`` (and ``XTRIM ... MINID``) on the broker."""
        self._check_open()
        return self.stream_add_blocking(
            stream,
            fields,
            maxlen,
            max_age_ms=max_age_ms,
            replicas=replicas,
            replica_timeout_ms=replica_timeout_ms,
        )

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
        """``XADD`` (and ``XTRIM ... MINID``) on the broker, from any thread.

        The broker has no replicas: an entry asked to be acknowledged by any is added
        (as a server would add it) and :class:`ReplicationError` raised.
        """
        entry_id = self.broker.streams.add(stream, fields, maxlen, max_age_ms)
        if replicas:
            check_acknowledged(0, replicas, replica_timeout_ms, f"{stream!r} on {self.url}")
        return entry_id

    async def stream_create_group(self, stream: str, group: str, start: str) -> bool:
        """``XGROUP CREATE ... MKSTREAM`` on the broker."""
        self._check_open()
        return self.broker.streams.create_group(stream, group, start)

    async def stream_read(
        self, stream: str, group: str, consumer: str, count: int, block_ms: int
    ) -> list[StreamEntry]:
        """``XREADGROUP ... BLOCK`` on the broker."""
        self._check_open()
        return await self.broker.streams.read(stream, group, consumer, count, block_ms)

    async def stream_ack(
        self, stream: str, group: str, ids: Sequence[str], *, delete: bool = False
    ) -> int:
        """``XACK`` [and ``XDEL``] on the broker."""
        self._check_open()
        return self.broker.streams.ack(stream, group, ids, delete)

    async def stream_claim(
        self, stream: str, group: str, consumer: str, ids: Sequence[str], *, touch: bool = False
    ) -> list[StreamEntry]:
        """``XCLAIM`` on the broker."""
        self._check_open()
        return self.broker.streams.claim(stream, group, consumer, ids, touch)

    async def stream_leave_group(self, stream: str, group: str, consumer: str) -> bool:
        """``XGROUP DELCONSUMER`` on the broker, if the consumer holds nothing."""
        self._check_open()
        return self.broker.streams.leave_group(stream, group, consumer)

    async def stream_pending_elsewhere(self, stream: str, group: str, consumer: str) -> int:
        """``XPENDING``'s summary on the broker, without ``consumer``'s entries."""
        self._check_open()
        return self.broker.streams.pending_elsewhere(stream, group, consumer)

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
        """``XAUTOCLAIM`` on the broker."""
        self._check_open()
        streams = self.broker.streams
        return streams.autoclaim(stream, group, consumer, min_idle_ms, count, start)

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError(f"{self!r} is closed")

    def blocking_client(self) -> redis.Redis:
        """A redis-py client on the broker's fakeredis server (``decode_responses=True``).

        This is ``app.cache`` on ``memory://``: every transport of one URL sees the same
        data. Its ``publish`` goes through the broker, to this transport's subscribers.

        Raises:
            ImportError: fakeredis is not installed (``pip install 'daebus[testing]'``).
        """
        with self._cache_lock:
            if self._cache is None:
                server = self.broker.cache_server()  # first: it explains a missing fakeredis
                from ._memory_cache import bridged_client

                self._cache = bridged_client(server, self)
            return self._cache

    # -- subscribing -----------------------------------------------------------------
    async def subscribe(
        self, name: str, handler: DeliveryHandler, *, pattern: bool = False
    ) -> Subscription:
        """Deliver messages on channel (or glob pattern) ``name`` to ``handler``.

        Raises:
            TransportError: the transport is closed (:meth:`connect` opens it again).
        """
        self._bind()  # before the tables: a loop that ended took its subscriptions along
        return await super().subscribe(name, handler, pattern=pattern)

    async def _add(self, name: str, pattern: bool) -> None:
        loop = self._bind()
        self.broker.subscribe(self, name, pattern)
        if self._reader is None or self._reader.done():
            self._reader = loop.create_task(self._read_forever(), name=f"daebus-reader {self.url}")

    async def _remove(self, name: str, pattern: bool) -> None:
        self.broker.unsubscribe(self, name, pattern)

    def _enqueue(self, delivery: Delivery) -> bool:
        """Queue a message for the reader (any thread; under the broker's lock)."""
        loop = self._loop
        if self._closed or loop is None or loop.is_closed():
            return False
        self._inbox.append(delivery)
        if not self._wake_pending:
            self._wake_pending = True
            try:
                loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop closed under us: the transport is gone
                self._inbox.pop()
                self._wake_pending = False
                return False
        return True

    def _wake(self) -> None:
        self._wake_pending = False
        if self._reader_started is not None:
            self._reader_started.set()

    async def _read_forever(self) -> None:
        inbox, ready, me = self._inbox, self._reader_started, asyncio.current_task()
        assert ready is not None
        while self._reader is me:  # else closed meanwhile (by one of its own handlers)
            while inbox and self._reader is me:
                delivery = inbox.popleft()
                self._delivering = True
                try:
                    waiter = self._deliver(delivery)
                    if waiter is not None:
                        self._end_batch()
                        try:
                            await waiter
                        except Exception:
                            logger.exception("handler for %s failed", delivery.channel)
                finally:
                    self._delivering = False
            self._end_batch()
            ready.clear()
            if inbox:  # queued between the last pop and the clear
                continue
            self._release_drain_waiters()
            await ready.wait()

    # -- for tests -------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """True when no message is queued for, or being given to, the handlers."""
        return not self._inbox and not self._delivering

    async def drained(self) -> None:
        """Wait until every message queued for this transport so far was handled.

        Handled means given to its handlers, and whatever they returned awaited. Call it
        on the transport's loop. :mod:`daebus.testing` uses it to wait for a service.
        """
        if not self._inbox and not self._delivering:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(future)
        await future

    def _release_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for future in waiters:
            if not future.done() and not future.get_loop().is_closed():
                future.set_result(None)
