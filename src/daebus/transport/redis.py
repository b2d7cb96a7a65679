"""Redis (and Valkey) pub/sub transport: lean asyncio connections parsed by hiredis.

One subscriber connection carries every channel and pattern of the transport. When it
drops, the reader reconnects with a capped backoff (never more than a second between
tries), subscribes every channel and pattern again, and says so in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from ..exceptions import TransportError
from ._endpoint import Endpoint
from ._redis_streams import RedisStreams
from ._resp import SILENCE_TIMEOUT, RespConnection, open_connection, pack, pack_publish
from ._resp_blocking import BlockingConnection, BlockingSubscriber
from ._sentinel_url import is_sentinel_url
from ._server_clock import ServerClock
from .base import ChannelReader, Delivery

__all__ = ["COMMAND_TIMEOUT", "RedisTransport", "normalize_url"]

logger = logging.getLogger(__name__)

_RECONNECT_FIRST_DELAY = 0.05
_RECONNECT_MAX_DELAY = 1.0
_STILL_DOWN_LOG_EVERY = 10.0
_CONNECT_TIMEOUT = 2.0
#: How long a blocking command (a publish from a thread, ``broadcast.send()``) waits for
#: the server when its caller gives no timeout: what the async connections allow too.
COMMAND_TIMEOUT = SILENCE_TIMEOUT


# A GET and a write in one script: nothing runs between them, so a claim that expired
# and was taken by another owner in the meantime is never extended or deleted.
_RENEW_IF_OWNER = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
)
_DELETE_IF_OWNER = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)


def normalize_url(url: str) -> str:
    """Accept ``valkey://`` and ``valkeys://`` as spellings of ``redis://`` / ``rediss://``."""
    if url.startswith("valkey://"):
        return "redis://" + url[len("valkey://") :]
    if url.startswith("valkeys://"):
        return "rediss://" + url[len("valkeys://") :]
    return url


# A short retry rides over a server restart (a stale pooled connection, a first refused
# connect) without stalling a handler for seconds, as redis-py's default backoff would.
_RETRY_BACKOFF = {"cap": 0.5, "base": 0.05}
_RETRIES = 3


def sync_options() -> dict[str, Any]:
    """The timeouts and retries daebus gives redis-py's blocking clients."""
    return {
        "socket_connect_timeout": _CONNECT_TIMEOUT,
        "socket_timeout": COMMAND_TIMEOUT,
        "retry": Retry(ExponentialBackoff(**_RETRY_BACKOFF), _RETRIES),
        "retry_on_error": [RedisConnectionError],
        "health_check_interval": 30,
    }


def sync_client(url: str, **options: Any) -> redis.Redis:
    """A blocking redis-py client for ``url`` with daebus's timeouts and retries.

    For a ``redis+sentinel://`` URL, a client of the master its sentinels name.
    """
    if is_sentinel_url(url):
        from .sentinel import sentinel_client

        return sentinel_client(url, **sync_options(), **options)
    return redis.Redis.from_url(normalize_url(url), **sync_options(), **options)


class RedisTransport(RedisStreams):
    """Pub/sub over a Redis-compatible server (``redis://``, ``rediss://``, ``unix://``).

    Two connections: one publishes (commands pipelined, replies matched in order), one
    subscribes (every channel and pattern; it reconnects on its own). Both are
    :class:`~daebus.transport._resp.RespConnection`; blocking publishes from other
    threads and the app's ``cache`` use a redis-py client. The stream commands of
    durable channels are :class:`~daebus.transport._redis_streams.RedisStreams`'.
    """

    ends_batches = True  # the messages of one read from the socket

    def __init__(self, url: str, *, endpoint: Endpoint | None = None) -> None:
        super().__init__(url)
        self._url = normalize_url(url)
        # ``endpoint``: the credentials and database of a server the URL does not name
        # itself (a Sentinel transport's master, whose address is looked up at connect).
        self._endpoint = endpoint if endpoint is not None else Endpoint.from_url(self._url)
        #: Where the blocking connections connect, asked at each connect: None for the
        #: URL's own server (``_endpoint``), a lookup for a Sentinel transport's master.
        self._resolve_blocking: Callable[[], Endpoint] | None = None
        self._closed = False
        self._publisher: RespConnection | None = None
        # PUBLISHes made while the publisher (re)connects, flushed in order once it is up.
        self._outbox: list[tuple[bytes, asyncio.Future[int]]] = []
        self._connecting: asyncio.Task[None] | None = None
        self._publisher_lock = asyncio.Lock()
        self._subscriber: RespConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        # Resolved after each attempt of the reader to (re)connect: True once subscribed.
        self._attempt: asyncio.Future[bool] | None = None
        self._subscribed = False  # the subscriber has (re-)subscribed everything
        self._sync: redis.Redis | None = None
        self._sync_lock = threading.Lock()
        # publish_blocking's connections: one per thread that publishes.
        self._local = threading.local()
        self._blocking: dict[BlockingConnection, threading.Thread] = {}
        # Membership records and the trimming of streams by age use the server's clock.
        self._server_clock = ServerClock()
        # (stream, group) -> the connection its XREADGROUP ... BLOCK waits on.
        self._stream_readers: dict[tuple[str, str], RespConnection] = {}

    def __repr__(self) -> str:
        return f"<RedisTransport {self.shown_url}>"

    # -- lifecycle -------------------------------------------------------------------
    async def _open_connection(self, **options: Any) -> RespConnection:
        """A new connection to the server (``options``: :func:`open_connection`'s).

        Every connection is made here, so that a subclass may look up where the server
        is first (Sentinel): connections are made rarely, never per message.
        """
        return await open_connection(self._endpoint, **options)

    async def connect(self) -> None:
        """Open the publishing connection and check the server answers."""
        self._closed = False
        await (await self._open_publisher()).send("PING")

    async def _open_publisher(self) -> RespConnection:
        async with self._publisher_lock:
            publisher = self._publisher
            if publisher is None or not publisher.is_open:
                publisher = await self._open_connection()
                if self._stopped():
                    publisher.close()
                    raise TransportError(f"{self!r} is closed")
                self._publisher = publisher
                self._flush_outbox(publisher)
            return publisher

    async def close(self) -> None:
        """Stop the reader and close every connection."""
        self._closed = True
        self._subscriptions.clear()
        for task in (self._reader, self._connecting):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._reader = self._connecting = None
        self._fail_outbox(TransportError("transport closed"))
        readers, self._stream_readers = list(self._stream_readers.values()), {}
        for connection in (self._subscriber, self._publisher, *readers):
            if connection is not None:
                connection.close()
                await asyncio.shield(connection.lost)
        self._subscriber = self._publisher = None
        self.close_blocking()

    def close_blocking(self) -> None:
        """Close the blocking connections (those of threads and the cache client)."""
        with self._sync_lock:
            sync, self._sync = self._sync, None
            blocking = list(self._blocking)
            self._blocking.clear()
        if sync is not None:
            sync.close()
        for blocking_connection in blocking:
            blocking_connection.close()

    # -- publishing ------------------------------------------------------------------
    def _ready_publisher(self) -> RespConnection | None:
        """The publishing connection, if it is open with nothing queued before it."""
        publisher = self._publisher
        if publisher is not None and not self._outbox and publisher.is_open:
            return publisher
        return None

    def publish_nowait(self, channel: str, data: bytes) -> asyncio.Future[int]:
        """Send a PUBLISH; everything sent in one loop iteration goes out in one write."""
        packed = pack_publish(channel, data)
        publisher = self._ready_publisher()
        if publisher is not None:
            return publisher.send_packed(packed)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_exception(TransportError(f"{self!r} is closed"))
            return future
        self._outbox.append((packed, future))
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(
                self._reconnect_publisher(), name=f"daebus-publisher {self.shown_url}"
            )
        return future

    def publish_then(self, channel: str, data: bytes, callback: Callable[[Any], None]) -> None:
        """Like :meth:`publish_nowait`; ``callback`` gets the count or the exception."""
        publisher = self._ready_publisher()
        if publisher is not None:
            publisher.send_packed_then(pack_publish(channel, data), callback)
        else:
            super().publish_then(channel, data, callback)

    async def publish_many(self, messages: Sequence[tuple[str, bytes]]) -> list[int]:
        """Publish several messages in order, in one write and one round trip."""
        futures = [self.publish_nowait(channel, data) for channel, data in messages]
        return [int(count) for count in await asyncio.gather(*futures)]

    async def _reconnect_publisher(self) -> None:
        # A short retry rides over a server restart without stalling a handler for long.
        delay = _RECONNECT_FIRST_DELAY
        for attempt in range(_RETRIES + 1):
            try:
                await self._open_publisher()
                return
            except TransportError as exc:
                if attempt == _RETRIES or self._closed:
                    self._fail_outbox(TransportError(f"PUBLISH failed: {exc}"))
                    return
            await asyncio.sleep(delay)
            delay *= 2

    def _flush_outbox(self, publisher: RespConnection) -> None:
        outbox, self._outbox = self._outbox, []
        for packed, future in outbox:
            if not future.done():
                _chain(publisher.send_packed(packed), future)

    def _fail_outbox(self, error: TransportError) -> None:
        outbox, self._outbox = self._outbox, []
        for _, future in outbox:
            if not future.done():
                future.set_exception(error)

    def publish_blocking(self, channel: str, data: bytes, timeout: float | None = None) -> int:
        """PUBLISH from any thread, on that thread's own blocking connection."""
        try:
            return int(self._thread_connection().command(pack_publish(channel, data), timeout))
        except TransportError as exc:
            raise TransportError(f"PUBLISH to {channel!r} failed: {exc}") from exc

    def publish_many_blocking(self, messages: Sequence[tuple[str, bytes]]) -> list[int]:
        """PUBLISH a batch from any thread in one write and one round trip."""
        commands = [pack_publish(channel, data) for channel, data in messages]
        try:
            replies = self._thread_connection().pipeline(commands)
        except TransportError as exc:
            raise TransportError(f"PUBLISH of {len(commands)} message(s) failed: {exc}") from exc
        try:
            return [int(reply) for reply in replies]  # receiver counts
        except TypeError:  # a reply is an error
            error = next(reply for reply in replies if isinstance(reply, TransportError))
            raise TransportError(f"PUBLISH failed: {error}") from None

    def publish_detached(self, channel: str, data: bytes) -> None:
        """PUBLISH from any thread without waiting for the receiver count."""
        try:
            self._thread_connection().send_only(pack_publish(channel, data))
        except TransportError as exc:
            raise TransportError(f"PUBLISH to {channel!r} failed: {exc}") from exc

    def _thread_connection(self) -> BlockingConnection:
        connection: BlockingConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = BlockingConnection(
                self._endpoint, COMMAND_TIMEOUT, self._resolve_blocking
            )
            with self._sync_lock:
                # Close the connections of threads that have ended since.
                for ended in [c for c, t in self._blocking.items() if not t.is_alive()]:
                    del self._blocking[ended]
                    ended.close()
                self._blocking[connection] = threading.current_thread()
        return connection

    def channel_reader(self, channel: str) -> ChannelReader:
        """A blocking connection subscribed to ``channel`` (connected on first use)."""
        return BlockingSubscriber(self._endpoint, channel, COMMAND_TIMEOUT, self._resolve_blocking)

    def blocking_client(self) -> redis.Redis:
        """The transport's blocking client (created on first use; thread-safe)."""
        with self._sync_lock:
            if self._sync is None:
                # decode_responses: this is also the app's ``cache``, as in 0.0.31.
                self._sync = sync_client(self._url, decode_responses=True)
            return self._sync

    # -- the instances of a service ---------------------------------------------------
    async def _command(self, *args: str | bytes | int) -> Any:
        """One command on the publishing connection (pipelined with what else is sent)."""
        publisher = self._ready_publisher() or await self._open_publisher()
        return await publisher.send(*args)

    async def claim(self, key: str, owner: str, ttl_ms: int) -> bool:
        """``SET key owner NX PX ttl_ms``: True if this call set it."""
        return await self._command("SET", key, owner, "NX", "PX", ttl_ms) is not None

    def claim_then(
        self, key: str, owner: str, ttl_ms: int, callback: Callable[[bool | Exception], None]
    ) -> None:
        """Like :meth:`claim`; ``callback`` runs as the reply is read, with no task."""
        publisher = self._ready_publisher()
        if publisher is None:
            super().claim_then(key, owner, ttl_ms, callback)
            return

        def claimed(reply: Any) -> None:
            callback(reply if isinstance(reply, TransportError) else reply is not None)

        publisher.send_packed_then(pack("SET", key, owner, "NX", "PX", ttl_ms), claimed)

    async def renew_claim(self, key: str, owner: str, ttl_ms: int) -> bool:
        """``PEXPIRE`` the key if its value is still ``owner``: one script, so atomic."""
        return bool(await self._command("EVAL", _RENEW_IF_OWNER, 1, key, owner, ttl_ms))

    async def release_claim(self, key: str, owner: str) -> bool:
        """``DEL`` the key if its value is still ``owner``: one script, so atomic."""
        return bool(await self._command("EVAL", _DELETE_IF_OWNER, 1, key, owner))

    async def renew_member(self, key: str, member: str, ttl_ms: int) -> list[str]:
        """Score ``member`` with its expiry on the server's clock; prune; list the members."""
        publisher = self._ready_publisher() or await self._open_publisher()
        now = await self._server_now_ms(publisher)
        # One write, one round trip: the record is pruned, renewed and read at once, and
        # the server's clock read again for the next time.
        replies = await asyncio.gather(
            publisher.send("ZREMRANGEBYSCORE", key, "-inf", now),
            publisher.send("ZADD", key, now + ttl_ms, member),
            publisher.send("PEXPIRE", key, ttl_ms),
            publisher.send("ZRANGE", key, 0, -1),
            publisher.send("TIME"),
        )
        self._server_clock.learn(replies[-1])
        return [bytes(name).decode("utf-8", "replace") for name in replies[-2]]

    async def _server_now_ms(self, publisher: RespConnection) -> int:
        """Now on the server's clock, in ms (asked with ``TIME`` if not learned lately)."""
        now = self._server_clock.now_ms()
        if now is None:
            self._server_clock.learn(await publisher.send("TIME"))
            now = self._server_clock.now_ms()
            assert now is not None
        return now

    async def remove_member(self, key: str, member: str) -> None:
        """``ZREM key member``."""
        await self._command("ZREM", key, member)

    async def put_entry(self, index: str, key: str, value: bytes, ttl_ms: int) -> None:
        """``SET key value PX ttl_ms``; ``key`` scored in ``index`` with its expiry; prune."""
        publisher = self._ready_publisher() or await self._open_publisher()
        now = await self._server_now_ms(publisher)
        replies = await asyncio.gather(
            publisher.send("SET", key, value, "PX", ttl_ms),
            publisher.send("ZADD", index, now + ttl_ms, key),
            publisher.send("ZREMRANGEBYSCORE", index, "-inf", now),
            publisher.send("TIME"),
        )
        self._server_clock.learn(replies[-1])

    async def drop_entry(self, index: str, key: str) -> None:
        """``DEL key`` and ``ZREM index key``, in one round trip."""
        publisher = self._ready_publisher() or await self._open_publisher()
        await asyncio.gather(publisher.send("DEL", key), publisher.send("ZREM", index, key))

    # -- subscribing -----------------------------------------------------------------
    async def _add(self, name: str, pattern: bool) -> None:
        if self._closed:
            raise TransportError(f"{self!r} is closed: connect() it again first")
        # The name is in the tables already: a reader that is still (re)connecting
        # subscribes it with everything else.
        if self._reader is None or self._reader.done():
            self._attempt = asyncio.get_running_loop().create_future()
            self._reader = asyncio.get_running_loop().create_task(
                self._read_forever(), name=f"daebus-reader {self.shown_url}"
            )
        subscriber = self._subscriber
        if subscriber is None:
            assert self._attempt is not None
            await asyncio.shield(self._attempt)
            return
        command = "PSUBSCRIBE" if pattern else "SUBSCRIBE"
        with contextlib.suppress(TransportError):  # lost: the reconnect subscribes it
            subscriber.send_unanswered(pack(command, name))
            await subscriber.send("PING")

    @property
    def receiving(self) -> bool:
        """False while the subscriber connection is being re-made."""
        if self._reader is None or self._reader.done():
            return True  # nothing subscribed yet (or closed): nothing to miss
        subscriber = self._subscriber
        return self._subscribed and subscriber is not None and subscriber.is_open

    async def until_receiving(self) -> None:
        """Return once the subscriber connection is up again (or the reader has stopped)."""
        while not self.receiving and self._attempt is not None:
            await asyncio.shield(self._attempt)

    async def _remove(self, name: str, pattern: bool) -> None:
        subscriber = self._subscriber
        if subscriber is None:
            return  # the name is out of the tables: a reconnect will not subscribe it
        command = "PUNSUBSCRIBE" if pattern else "UNSUBSCRIBE"
        with contextlib.suppress(TransportError):
            subscriber.send_unanswered(pack(command, name))
            await subscriber.send("PING")

    async def _subscribe_all(self, subscriber: RespConnection) -> None:
        channels = [name for is_pattern, name in self._subscriptions if not is_pattern]
        patterns = [name for is_pattern, name in self._subscriptions if is_pattern]
        if channels:
            subscriber.send_unanswered(pack("SUBSCRIBE", *channels))
        if patterns:
            subscriber.send_unanswered(pack("PSUBSCRIBE", *patterns))
        await subscriber.send("PING")

    def _on_push(self, message: list[Any]) -> Awaitable[None] | None:
        # tuple.__new__ makes the named tuple without its __new__, a Python function.
        if message[0] == b"message":
            fields = (message[1].decode("utf-8", "replace"), message[2], None)
        else:
            fields = (
                message[2].decode("utf-8", "replace"),
                message[3],
                message[1].decode("utf-8", "replace"),
            )
        return self._deliver(_new_tuple(Delivery, fields))

    def _stopped(self) -> bool:
        # A method, not the attribute: close() may set it while the reader awaits.
        return self._closed

    def _attempted(self, subscribed: bool) -> None:
        attempt, self._attempt = self._attempt, asyncio.get_running_loop().create_future()
        if attempt is not None and not attempt.done():
            attempt.set_result(subscribed)

    async def _read_forever(self) -> None:
        """Keep a subscribed connection up: connect, subscribe everything, wait, repeat."""
        down_since: float | None = None
        last_report = 0.0
        delay = _RECONNECT_FIRST_DELAY
        dropped_for_buffer: int | None = None  # the server's count when we connected
        while not self._closed:
            try:
                subscriber = await self._open_connection(
                    on_push=self._on_push,
                    on_pushes_end=self._end_batch,
                    ping_when_idle=True,
                )
                self._subscriber = subscriber
                try:
                    await self._subscribe_all(subscriber)
                except BaseException:
                    self._subscriber = None
                    subscriber.close()
                    raise
            except TransportError as exc:
                self._attempted(False)
                now = time.monotonic()
                if down_since is None:
                    down_since = last_report = now
                elif now - last_report >= _STILL_DOWN_LOG_EVERY:
                    last_report = now
                    logger.warning(
                        "still cannot reach %s after %.0f s (%s); retrying every %.1f s",
                        self.shown_url,
                        now - down_since,
                        exc,
                        delay,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RECONNECT_MAX_DELAY)
                continue
            self._subscribed = True
            self._attempted(True)
            dropped_before, dropped_for_buffer = (
                dropped_for_buffer,
                await _output_buffer_drops(subscriber),
            )
            if down_since is not None:
                channels = sum(1 for is_pattern, _ in self._subscriptions if not is_pattern)
                why = ""
                if (
                    dropped_before is not None
                    and dropped_for_buffer is not None
                    and dropped_for_buffer > dropped_before
                ):
                    why = (
                        " (the server had dropped it: more was queued for it than the "
                        "server's client-output-buffer-limit for pub/sub allows)"
                    )
                logger.warning(
                    "reconnected to %s after %.1f s%s; re-subscribed %d channel(s) and "
                    "%d pattern(s)",
                    self.shown_url,
                    time.monotonic() - down_since,
                    why,
                    channels,
                    len(self._subscriptions) - channels,
                )
            down_since = None
            delay = _RECONNECT_FIRST_DELAY
            error = await asyncio.shield(subscriber.lost)
            self._subscribed = False
            if self._subscriber is subscriber:
                self._subscriber = None
            if self._stopped():
                return
            down_since = last_report = time.monotonic()
            reason = str(error) if error else "closed by the server"
            logger.warning(
                "lost the subscriber connection to %s (%s); reconnecting", self.shown_url, reason
            )
            self._disconnected(TransportError(f"lost the connection to {self.shown_url}: {reason}"))


async def _output_buffer_drops(connection: RespConnection) -> int | None:
    """How many clients the server has dropped for output-buffer overflow, if it says.

    Compared across a reconnect, it tells a subscriber that fell behind from a restart.
    """
    try:
        info = await connection.send("INFO", "stats")
    except TransportError:  # INFO renamed or refused by an ACL: the reason stays unknown
        return None
    for line in bytes(info).splitlines():
        name, _, value = line.partition(b":")
        if name == b"client_output_buffer_limit_disconnections":
            return int(value)
    return None


_new_tuple = tuple.__new__


def _chain(source: asyncio.Future[Any], target: asyncio.Future[int]) -> None:
    def copy(done: asyncio.Future[Any]) -> None:
        if target.done():
            return
        if done.cancelled():
            target.cancel()
        elif done.exception() is not None:
            target.set_exception(done.exception())  # type: ignore[arg-type]
        else:
            target.set_result(int(done.result()))

    source.add_done_callback(copy)
