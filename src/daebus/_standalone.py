"""Publishing and the cache for code running outside any app (a script, a shell).

``broadcast.send()`` and ``cache`` outside a handler end up here: a blocking publisher
and a redis-py client per resolved server, kept for the life of the process.
"""

from __future__ import annotations

import atexit
import threading
from typing import TYPE_CHECKING

from . import config
from .exceptions import SetupError
from .transport import (
    NO_CACHE_ON_A_CLUSTER,
    Transport,
    check_url_options,
    is_cluster_url,
    transport_from_url,
)
from .transport.memory import MemoryTransport, broker_for

if TYPE_CHECKING:
    import redis

__all__ = ["StandalonePublisher", "standalone_cache", "standalone_publisher"]

_standalone: dict[str, redis.Redis] = {}
_standalone_lock = threading.Lock()


def standalone_cache() -> redis.Redis:
    """A client for code running outside any app, on ``$DAEBUS_REDIS_URL`` or localhost."""
    url = config.resolve_redis_url()
    if url.startswith("memory://"):
        cache = standalone_publisher().transport.blocking_client()
        assert cache is not None  # memory:// transports have one
        return cache
    if is_cluster_url(url):
        raise SetupError(NO_CACHE_ON_A_CLUSTER)
    with _standalone_lock:
        client = _standalone.get(url)
        if client is None:
            from .transport.redis import sync_client  # redis-py: loaded only when used

            check_url_options(url)  # as the broadcasts of this URL's transport do
            client = _standalone[url] = sync_client(url, decode_responses=True)
        return client


class StandalonePublisher:
    """Publishing for code outside any app.

    Blocking calls on the per-thread connections of a transport that is never
    connected (no event loop is involved).
    """

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def publish(self, channel: str, data: bytes) -> int:
        """Publish one message; return the receiver count."""
        return self.transport.publish_blocking(channel, data)

    def publish_many(self, messages: list[tuple[str, bytes]]) -> list[int]:
        """Publish a batch in one round trip; return each receiver count."""
        return self.transport.publish_many_blocking(messages)

    def stream_add(
        self,
        stream: str,
        fields: dict[str, bytes],
        maxlen: int,
        max_age_ms: int | None,
        **replication: int,
    ) -> str:
        """Append to a stream (a durable send); return the entry's id."""
        return self.transport.stream_add_blocking(
            stream, fields, maxlen, max_age_ms=max_age_ms, **replication
        )

    def stream_add_many(
        self,
        entries: list[tuple[str, dict[str, bytes]]],
        maxlen: int,
        max_age_ms: int | None,
        **replication: int,
    ) -> list[str]:
        """Append many entries in one round trip; return their ids."""
        return self.transport.stream_add_many_blocking(
            entries, maxlen, max_age_ms=max_age_ms, **replication
        )

    def is_stale(self) -> bool:
        """Whether its ``memory://`` broker was forgotten, so that apps now use another."""
        transport = self.transport
        if not isinstance(transport, MemoryTransport):
            return False
        return transport.broker is not broker_for(transport.url)


_publishers: dict[str, StandalonePublisher] = {}


@atexit.register
def _close_standalone_publishers() -> None:
    # They live as long as the process: close their sockets before it ends.
    with _standalone_lock:
        publishers = list(_publishers.values())
        _publishers.clear()
    for publisher in publishers:
        publisher.transport.close_blocking()


def standalone_publisher() -> StandalonePublisher:
    """The publisher for code outside any app, on the resolved server.

    On ``memory://`` it follows :func:`daebus.transport.memory.forget`: once a broker is
    forgotten, code outside any app publishes (and caches) where the apps started
    afterwards do.
    """
    url = config.resolve_redis_url()
    with _standalone_lock:
        publisher = _publishers.get(url)
        if publisher is None or publisher.is_stale():
            publisher = _publishers[url] = StandalonePublisher(transport_from_url(url))
        return publisher
