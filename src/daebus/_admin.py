"""Blocking access to a server's streams and statistics, for tools rather than services.

The dead letters (:mod:`daebus.dead_letters`) and the health checks
(:mod:`daebus.health`) read and change streams outside any consumer group and ask the
server how it is. They do it through an :class:`Admin`: over redis-py for a Redis URL,
on the broker's own streams for ``memory://``. Every failure to reach the server is a
:class:`~daebus.exceptions.TransportError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from . import config, protocol
from .exceptions import SetupError, TransportError
from .transport import check_url_options, is_cluster_url, is_sentinel_url
from .transport._glob import compile_glob
from .transport._url import redact_url
from .transport.base import StreamEntry
from .transport.memory import MemoryBroker, broker_for

if TYPE_CHECKING:
    import redis

__all__ = ["Admin", "MemoryAdmin", "RedisAdmin", "open_admin"]

#: How many keys one ``SCAN`` step looks at.
_SCAN_COUNT = 1000


def open_admin(url: str | None = None, *, timeout: float | None = None) -> Admin:
    """An :class:`Admin` of ``url``, else of the server the library would use.

    ``timeout`` (by default the library's command timeout, 5 s) bounds each connect and
    each command, with no retry: a tool, or a health check, answers promptly about a
    server that is down or hung.

    Raises:
        TransportError: no URL is configured and no server can be found or started.
        SetupError: the URL has an option daebus does not honour, or names a cluster.
    """
    url = config.resolve_redis_url(url)
    if url.startswith("memory://"):
        return MemoryAdmin(broker_for(url))
    if is_cluster_url(url):
        # Its reads (SCAN, PUBSUB CHANNELS, INFO) would see one node of the cluster.
        raise SetupError(
            "the dead letters, health checks and registry readers read one server: "
            f"they do not read a cluster yet ({redact_url(url)})"
        )
    check_url_options(url)
    return RedisAdmin(url, timeout)


class Admin:
    """A server's streams and statistics, in blocking calls (a thread's or a script's)."""

    def ping(self) -> None:
        """Raise :class:`TransportError` unless the server answers."""
        raise NotImplementedError

    def server_stats(self) -> dict[str, Any]:
        """``connected_clients``, ``used_memory`` and ``used_memory_human`` (None: unknown)."""
        raise NotImplementedError

    def stream_names(self, prefix: str) -> list[str]:
        """The streams whose names start with ``prefix``, sorted."""
        raise NotImplementedError

    def stream_range(
        self, stream: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[StreamEntry]:
        """``XRANGE``: entries from ``start`` to ``end`` (ids, inclusive), oldest first."""
        raise NotImplementedError

    def stream_length(self, stream: str) -> int:
        """``XLEN``: 0 for a stream that does not exist."""
        raise NotImplementedError

    def stream_last_id(self, stream: str) -> str | None:
        """The id of the stream's newest entry (None: it has none)."""
        raise NotImplementedError

    def stream_groups(self, stream: str) -> list[dict[str, Any]]:
        """``XINFO GROUPS``: ``name``, ``consumers``, ``pending``, ``last-delivered-id``, ``lag``.

        ``lag`` (how many entries the group has yet to read) is None where the server
        cannot tell.
        """
        raise NotImplementedError

    def stream_add(self, stream: str, fields: dict[str, bytes]) -> str:
        """``XADD`` without trimming; the new entry's id."""
        raise NotImplementedError

    def stream_delete(self, stream: str, ids: Sequence[str]) -> int:
        """``XDEL``: how many of ``ids`` were deleted."""
        raise NotImplementedError

    def stream_remove(self, stream: str) -> int:
        """``DEL`` the stream: how many entries it held."""
        raise NotImplementedError

    def subscribers(self, channels: Sequence[str]) -> dict[str, int]:
        """``PUBSUB NUMSUB``: the subscriptions to each channel (patterns not counted)."""
        raise NotImplementedError

    def patterns(self) -> int:
        """``PUBSUB NUMPAT``: how many pattern subscriptions there are."""
        raise NotImplementedError

    def channels(self, pattern: str | None = None) -> list[str]:
        """``PUBSUB CHANNELS [pattern]``: the channels with a subscriber, sorted."""
        raise NotImplementedError

    def entries(self, index: str) -> list[tuple[str, bytes, float]]:
        """``(key, value, seconds left)`` of each live entry ``index`` lists, by key.

        See :meth:`daebus.transport.Transport.put_entry`: keys listed that expired
        meanwhile are skipped.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Let go of the connections."""

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class RedisAdmin(Admin):
    """An :class:`Admin` of a Redis-compatible server, over a redis-py client."""

    def __init__(self, url: str, timeout: float | None = None) -> None:
        # redis-py is loaded only when used: ``import daebus`` must not pay for it.
        from .transport.redis import COMMAND_TIMEOUT, normalize_url

        self.url = url
        if timeout is None:
            timeout = COMMAND_TIMEOUT
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        options: dict[str, Any] = {
            "socket_connect_timeout": timeout,
            "socket_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        if is_sentinel_url(url):  # the master the sentinels name, found at each connect
            from .transport.sentinel import sentinel_client

            self.client: redis.Redis = sentinel_client(url, **options)
        else:
            self.client = redis.Redis.from_url(normalize_url(url), **options)

    @contextlib.contextmanager
    def _reported(self, what: str) -> Iterator[None]:
        import redis

        try:
            yield
        except (redis.RedisError, OSError) as exc:
            raise TransportError(f"{what} failed: {exc or type(exc).__name__}") from exc

    def ping(self) -> None:
        with self._reported("PING"):
            self.client.ping()

    def server_stats(self) -> dict[str, Any]:
        with self._reported("INFO"):
            clients = self.client.info("clients")
            memory = self.client.info("memory")
        return {
            "connected_clients": clients.get("connected_clients"),
            "used_memory": memory.get("used_memory"),
            "used_memory_human": memory.get("used_memory_human"),
        }

    def stream_names(self, prefix: str) -> list[str]:
        match = prefix.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")
        match = match.replace("[", "\\[") + "*"
        with self._reported("SCAN"):
            keys = self.client.scan_iter(match=match, count=_SCAN_COUNT, _type="stream")
            return sorted({_text(key) for key in keys})

    def stream_range(
        self, stream: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[StreamEntry]:
        with self._reported(f"XRANGE {stream}"):
            reply: Any = self.client.xrange(stream, start, end, count=count)
        return [
            StreamEntry(_text(entry_id), {_text(k): bytes(v) for k, v in fields.items()}, 0)
            for entry_id, fields in reply
        ]

    def stream_length(self, stream: str) -> int:
        with self._reported(f"XLEN {stream}"):
            return int(self.client.xlen(stream))

    def stream_last_id(self, stream: str) -> str | None:
        with self._reported(f"XREVRANGE {stream}"):
            reply = self.client.xrevrange(stream, count=1)
        return _text(reply[0][0]) if reply else None

    def stream_groups(self, stream: str) -> list[dict[str, Any]]:
        import redis

        try:
            with self._reported(f"XINFO GROUPS {stream}"):
                groups = self.client.xinfo_groups(stream)
        except TransportError as exc:
            if isinstance(exc.__cause__, redis.ResponseError) and "no such key" in str(exc):
                return []
            raise
        return [
            {
                "name": _text(group["name"]),
                "consumers": int(group["consumers"]),
                "pending": int(group["pending"]),
                "last-delivered-id": _text(group["last-delivered-id"]),
                # Redis 7 and later; None when it cannot tell (after a deletion, say).
                "lag": None if group.get("lag") is None else int(group["lag"]),
            }
            for group in groups
        ]

    def stream_add(self, stream: str, fields: dict[str, bytes]) -> str:
        with self._reported(f"XADD {stream}"):
            return _text(self.client.xadd(stream, fields))  # type: ignore[arg-type]

    def stream_delete(self, stream: str, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        with self._reported(f"XDEL {stream}"):
            return int(self.client.xdel(stream, *ids))

    def stream_remove(self, stream: str) -> int:
        with self._reported(f"DEL {stream}"):
            pipe = self.client.pipeline(transaction=True)  # nothing added in between
            pipe.xlen(stream)
            pipe.delete(stream)
            length, _ = pipe.execute()
        return int(length)

    def subscribers(self, channels: Sequence[str]) -> dict[str, int]:
        if not channels:
            return {}
        with self._reported("PUBSUB NUMSUB"):
            reply = self.client.pubsub_numsub(*channels)
        counts = {_text(channel): int(count) for channel, count in reply}
        return {channel: counts.get(channel, 0) for channel in channels}

    def patterns(self) -> int:
        with self._reported("PUBSUB NUMPAT"):
            return int(self.client.pubsub_numpat())

    def channels(self, pattern: str | None = None) -> list[str]:
        with self._reported("PUBSUB CHANNELS"):
            names = self.client.pubsub_channels(pattern or "*")
        return sorted({_text(name) for name in names})

    def entries(self, index: str) -> list[tuple[str, bytes, float]]:
        # Anyone who can write to the server can list keys in the index, or write huge
        # values: what is read is bounded (ENTRIES_READ keys, ENTRY_LIMIT bytes each,
        # about ENTRIES_BYTES in all), the keys soonest to expire first: those of the
        # running instances, refreshed every heartbeat.
        with self._reported(f"ZRANGE {index}"):
            keys = list(
                dict.fromkeys(_text(key) for key in self.client.zrange(index, 0, ENTRIES_READ - 1))
            )
            found = []
            budget = ENTRIES_BYTES
            for start in range(0, len(keys), _ENTRIES_BATCH):
                batch = keys[start : start + _ENTRIES_BATCH]
                # PTTL, not the index's scores: the time left by the server's own clock.
                pipe = self.client.pipeline(transaction=False)
                for key in batch:
                    pipe.getrange(key, 0, ENTRY_LIMIT)
                    pipe.pttl(key)
                # A key of another type answers WRONGTYPE: that one is skipped, not all.
                replies = pipe.execute(raise_on_error=False)
                for key, value, ms in zip(batch, replies[::2], replies[1::2], strict=True):
                    # GETRANGE gives b"" for a key that expired meanwhile.
                    if isinstance(value, bytes) and value and len(value) <= ENTRY_LIMIT:
                        found.append((key, bytes(value), max(0, int(ms)) / 1000))
                        budget -= len(value)
                        if budget <= 0:
                            return sorted(found)
        return sorted(found)

    def close(self) -> None:
        self.client.close()


class MemoryAdmin(Admin):
    """An :class:`Admin` of a ``memory://`` broker: there is no server to be down."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self.streams = broker.streams

    def ping(self) -> None:
        pass

    def server_stats(self) -> dict[str, Any]:
        return {"connected_clients": None, "used_memory": None, "used_memory_human": None}

    def stream_names(self, prefix: str) -> list[str]:
        return sorted(name for name in self.streams.names() if name.startswith(prefix))

    def stream_range(
        self, stream: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[StreamEntry]:
        return self.streams.range(stream, start, end, count)

    def stream_length(self, stream: str) -> int:
        return self.streams.length(stream)

    def stream_last_id(self, stream: str) -> str | None:
        entries = self.streams.range(stream, "-", "+", None)
        return entries[-1].id if entries else None

    def stream_groups(self, stream: str) -> list[dict[str, Any]]:
        return self.streams.groups(stream)

    def stream_add(self, stream: str, fields: dict[str, bytes]) -> str:
        return self.streams.add(stream, fields, _UNTRIMMED)

    def stream_delete(self, stream: str, ids: Sequence[str]) -> int:
        return self.streams.delete(stream, ids)

    def stream_remove(self, stream: str) -> int:
        return self.streams.remove(stream)

    def subscribers(self, channels: Sequence[str]) -> dict[str, int]:
        return {channel: self.broker.numsub(channel) for channel in channels}

    def patterns(self) -> int:
        return self.broker.numpat()

    def channels(self, pattern: str | None = None) -> list[str]:
        names = self.broker.channel_names()
        if pattern is None:
            return names
        matches = compile_glob(pattern)
        return [name for name in names if matches(name.encode("utf-8"))]

    def entries(self, index: str) -> list[tuple[str, bytes, float]]:
        return self.broker.records.entries(index)


#: How many registry entries are read at most, the longest one read, and about how
#: many bytes in all (see RedisAdmin.entries).
ENTRIES_READ = 100_000
ENTRY_LIMIT = protocol.REGISTRY_ENTRY_LIMIT
ENTRIES_BYTES = 64 * 1024 * 1024
# Keys read in one round trip: at most 64 MiB of entries.
_ENTRIES_BATCH = 256

#: A length no stream reaches: an add that trims nothing.
_UNTRIMMED = 1 << 62


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
