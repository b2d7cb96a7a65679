"""Redis (and Valkey) pub/sub transport, on redis-py's asyncio client with hiredis.

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
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError, RedisError
from redis.retry import Retry

from ..exceptions import TransportError
from .base import Delivery, Transport

__all__ = ["RedisTransport", "normalize_url"]

logger = logging.getLogger(__name__)

_RECONNECT_FIRST_DELAY = 0.05
_RECONNECT_MAX_DELAY = 1.0
_STILL_DOWN_LOG_EVERY = 10.0
_CONNECT_TIMEOUT = 2.0
_COMMAND_TIMEOUT = 10.0


def normalize_url(url: str) -> str:
    """Accept ``valkey://`` and ``valkeys://`` as spellings of ``redis://`` / ``rediss://``."""
    if url.startswith("valkey://"):
        return "redis://" + url[len("valkey://") :]
    if url.startswith("valkeys://"):
        return "rediss://" + url[len("valkeys://") :]
    return url


# A short retry rides over a server restart (a stale pooled connection, a first refused
# connect) without stalling a handler for seconds, as redis-py's default backoff would.
# The asyncio client needs redis.asyncio's Retry: with the blocking one it never retries.
_RETRY_BACKOFF = {"cap": 0.5, "base": 0.05}
_RETRIES = 3


def sync_client(url: str, **options: Any) -> redis.Redis:
    """A blocking redis-py client for ``url`` with daebus's timeouts and retries."""
    return redis.Redis.from_url(
        normalize_url(url),
        socket_connect_timeout=_CONNECT_TIMEOUT,
        socket_timeout=_COMMAND_TIMEOUT,
        retry=Retry(ExponentialBackoff(**_RETRY_BACKOFF), _RETRIES),
        retry_on_error=[RedisConnectionError],
        health_check_interval=30,
        **options,
    )


class RedisTransport(Transport):
    """Pub/sub over a Redis-compatible server (``redis://``, ``rediss://``, ``unix://``)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._url = normalize_url(url)
        self._publisher: aioredis.Redis | None = None
        self._listener_client: aioredis.Redis | None = None
        self._pubsub: Any = None  # redis.asyncio.client.PubSub; untyped in redis-py
        self._reader: asyncio.Task[None] | None = None
        self._sync: redis.Redis | None = None
        self._sync_lock = threading.Lock()
        # Serialises SUBSCRIBE/UNSUBSCRIBE with a reconnect's re-subscription.
        self._wire_lock = asyncio.Lock()
        self._closed = False
        self._outbox: list[tuple[str, bytes, asyncio.Future[int]]] = []
        self._outbox_ready = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<RedisTransport {self.url}>"

    # -- lifecycle -------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the publishing connection and check the server answers."""
        self._closed = False
        if self._publisher is None:
            self._publisher = aioredis.Redis.from_url(
                self._url,
                socket_connect_timeout=_CONNECT_TIMEOUT,
                socket_timeout=_COMMAND_TIMEOUT,
                retry=AsyncRetry(ExponentialBackoff(**_RETRY_BACKOFF), _RETRIES),
                retry_on_error=[RedisConnectionError],
            )
        try:
            await self._publisher.ping()
        except RedisError as exc:
            raise TransportError(f"cannot reach Redis at {self.url}: {exc}") from exc

    async def close(self) -> None:
        """Stop the reader and close every connection."""
        self._closed = True
        self._subscriptions.clear()
        for task in (self._reader, self._writer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._reader = self._writer = None
        for _, _, future in self._outbox:
            if not future.done():
                future.set_exception(TransportError("transport closed"))
        self._outbox = []
        await self._drop_pubsub()
        for client in (self._publisher, self._listener_client):
            if client is not None:
                await client.aclose()
        self._publisher = self._listener_client = None
        with self._sync_lock:
            sync, self._sync = self._sync, None
        if sync is not None:
            sync.close()

    # -- publishing ------------------------------------------------------------------
    def publish_nowait(self, channel: str, data: bytes) -> asyncio.Future[int]:
        """Queue a PUBLISH; queued messages go out in order, batched into pipelines."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_exception(TransportError(f"{self!r} is closed"))
            return future
        self._outbox.append((channel, data, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(
                self._write_forever(), name=f"daebus-writer {self.url}"
            )
        self._outbox_ready.set()
        return future

    async def publish_many(self, messages: Any) -> list[int]:
        """Publish several messages in order, in as few round trips as possible."""
        futures = [self.publish_nowait(channel, data) for channel, data in messages]
        return list(await asyncio.gather(*futures))

    async def _write_forever(self) -> None:
        # One writer per transport: everything queued while a round trip is in flight
        # goes out in the next pipeline, so publishes keep their order and batch up
        # under load without waiting for anything at low load.
        while not self._closed:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            batch, self._outbox = self._outbox, []
            if not batch:
                continue
            try:
                if self._publisher is None:
                    await self.connect()
                assert self._publisher is not None
                if len(batch) == 1:
                    channel, data, _ = batch[0]
                    results: list[Any] = [await self._publisher.publish(channel, data)]
                else:
                    pipe = self._publisher.pipeline(transaction=False)
                    for channel, data, _ in batch:
                        pipe.publish(channel, data)
                    results = await pipe.execute()
            except (RedisError, OSError, TransportError) as exc:
                error = TransportError(f"PUBLISH failed: {exc}")
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, _, future), count in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(int(count))

    def publish_blocking(self, channel: str, data: bytes) -> int:
        """PUBLISH from any thread through a thread-safe blocking connection pool."""
        try:
            return int(self.blocking_client().publish(channel, data))
        except RedisError as exc:
            raise TransportError(f"PUBLISH to {channel!r} failed: {exc}") from exc

    def blocking_client(self) -> redis.Redis:
        """The transport's blocking client (created on first use; thread-safe)."""
        with self._sync_lock:
            if self._sync is None:
                # decode_responses: this is also the app's ``cache``, as in 0.0.31.
                self._sync = sync_client(self._url, decode_responses=True)
            return self._sync

    # -- subscribing -----------------------------------------------------------------
    async def _add(self, name: str, pattern: bool) -> None:
        async with self._wire_lock:
            try:
                if self._pubsub is None:
                    await self._open_pubsub()  # subscribes everything, this name included
                elif pattern:
                    await self._pubsub.psubscribe(name)
                else:
                    await self._pubsub.subscribe(name)
            except (RedisError, OSError) as exc:
                # The name is in the tables: the reader's reconnect will subscribe it.
                logger.debug("subscribing %s deferred until reconnect: %s", name, exc)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(
                self._read_forever(), name=f"daebus-reader {self.url}"
            )

    async def _remove(self, name: str, pattern: bool) -> None:
        async with self._wire_lock:
            if self._pubsub is None:
                return
            try:
                if pattern:
                    await self._pubsub.punsubscribe(name)
                else:
                    await self._pubsub.unsubscribe(name)
            except RedisError:
                # The reader is reconnecting; the name is already out of the tables, so it
                # will not be subscribed again.
                pass

    async def _open_pubsub(self) -> None:
        """Open a subscriber connection and subscribe every known channel and pattern."""
        if self._pubsub is not None:
            return  # another task got there first
        if self._listener_client is None:
            # No retries here: the reader owns reconnecting, and must hear about a drop.
            self._listener_client = aioredis.Redis.from_url(
                self._url,
                socket_connect_timeout=_CONNECT_TIMEOUT,
                retry=AsyncRetry(NoBackoff(), 0),
            )
        pubsub = self._listener_client.pubsub(ignore_subscribe_messages=True)
        channels = [name for is_pattern, name in self._subscriptions if not is_pattern]
        patterns = [name for is_pattern, name in self._subscriptions if is_pattern]
        try:
            if channels:
                await pubsub.subscribe(*channels)
            if patterns:
                await pubsub.psubscribe(*patterns)
            if not channels and not patterns:
                await pubsub.ping()
        except BaseException:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            raise
        self._pubsub = pubsub

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    async def _reconnect(self, error: BaseException | None) -> None:
        """Reopen the subscriber connection, retrying until it works or we close."""
        if self._closed:
            return
        if error is not None:
            logger.warning(
                "lost the subscriber connection to %s (%s); reconnecting", self.url, error
            )
        down_since = last_report = time.monotonic()
        delay = _RECONNECT_FIRST_DELAY
        await self._drop_pubsub()
        while not self._closed:
            await asyncio.sleep(delay)
            try:
                async with self._wire_lock:
                    await self._open_pubsub()
            except (RedisError, OSError) as exc:
                delay = min(delay * 2, _RECONNECT_MAX_DELAY)
                now = time.monotonic()
                if now - last_report >= _STILL_DOWN_LOG_EVERY:
                    last_report = now
                    logger.warning(
                        "still cannot reach %s after %.0f s (%s); retrying every %.1f s",
                        self.url,
                        now - down_since,
                        exc,
                        delay,
                    )
                continue
            channels = sum(1 for is_pattern, _ in self._subscriptions if not is_pattern)
            logger.warning(
                "reconnected to %s after %.1f s; re-subscribed %d channel(s) and %d pattern(s)",
                self.url,
                time.monotonic() - down_since,
                channels,
                len(self._subscriptions) - channels,
            )
            return

    async def _read_forever(self) -> None:
        while not self._closed:
            pubsub = self._pubsub
            if pubsub is None:
                await self._reconnect(None)
                continue
            try:
                message = await pubsub.get_message(timeout=None)
            except (RedisError, OSError) as exc:
                await self._reconnect(exc)
                continue
            if not message:
                continue
            kind = message["type"]
            if kind == "message":
                delivery = Delivery(message["channel"].decode("utf-8", "replace"), message["data"])
            elif kind == "pmessage":
                delivery = Delivery(
                    message["channel"].decode("utf-8", "replace"),
                    message["data"],
                    message["pattern"].decode("utf-8", "replace"),
                )
            else:
                continue
            waiter = self._deliver(delivery)
            if waiter is not None:
                try:
                    await waiter
                except Exception:
                    logger.exception("handler for %s failed", delivery.channel)
