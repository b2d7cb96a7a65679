"""Transports: how bytes get from a publisher to the subscribers of a channel.

:func:`transport_from_url` builds the one a URL names, and refuses a Redis URL with a
query option the transport would ignore (:func:`check_url_options`).
:class:`RedisTransport` is imported on first use: it loads redis-py, which takes
longer to import than the rest of daebus, and a program that only imports daebus
(``daebus --help``, a ``memory://`` test) does not need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._cluster_seeds import CLUSTER_SCHEMES
from ._endpoint import REDIS_URL_OPTIONS, TLS_URL_OPTIONS, check_url_options
from ._sentinel_url import is_sentinel_url
from .base import BatchEnd, ChannelReader, Delivery, DeliveryHandler, Subscription, Transport

if TYPE_CHECKING:
    from .cluster import ClusterTransport
    from .redis import RedisTransport
    from .sentinel import SentinelTransport

_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "valkey", "valkeys"})

__all__ = [
    "NO_CACHE_ON_A_CLUSTER",
    "REDIS_URL_OPTIONS",
    "TLS_URL_OPTIONS",
    "BatchEnd",
    "ChannelReader",
    "ClusterTransport",
    "Delivery",
    "DeliveryHandler",
    "RedisTransport",
    "SentinelTransport",
    "Subscription",
    "Transport",
    "check_url_options",
    "is_cluster_url",
    "is_sentinel_url",
    "transport_from_url",
]


def __getattr__(name: str) -> Any:
    if name == "RedisTransport":
        from .redis import RedisTransport

        return RedisTransport
    if name == "ClusterTransport":
        from .cluster import ClusterTransport

        return ClusterTransport
    if name == "SentinelTransport":
        from .sentinel import SentinelTransport

        return SentinelTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Why ``cache`` (``app.cache``, ``DaebusCaller.redis``, ``daebus.cache``) fails on a cluster.
NO_CACHE_ON_A_CLUSTER = (
    "the cache is a single-node redis-py client, which a cluster would answer with MOVED: "
    "daebus has no cache on a cluster yet (redis.cluster.RedisCluster, given the cluster's "
    "nodes, is one)"
)


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a cluster (``redis+cluster://``, ``valkey+cluster://``)."""
    return "://" in url and url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def transport_from_url(url: str) -> Transport:
    """Build the transport a URL names.

    ``redis://``, ``rediss://``, ``unix://``, ``valkey://`` and ``valkeys://`` are Redis
    pub/sub; ``redis+cluster://host:port,host:port`` (or ``valkey+cluster://``) is a
    Valkey/Redis Cluster, on sharded pub/sub;
    ``redis+sentinel://host:port,host:port/MASTER_NAME[/db]`` (or ``valkey+sentinel://``)
    is the master a set of sentinels names, followed across failovers; ``memory://`` (or
    ``memory://<name>``) is the in-process broker of that name.

    Raises:
        SetupError: a Redis URL has a query option the transport does not honour
            (see :func:`check_url_options`).
        ValueError: the scheme is none of those, or the URL is malformed.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in _REDIS_SCHEMES:
        from .redis import RedisTransport  # checks the URL's options

        return RedisTransport(url)
    if is_cluster_url(url):
        from .cluster import ClusterTransport  # checks the URL's options

        return ClusterTransport(url)
    if is_sentinel_url(url):
        from .sentinel import SentinelTransport  # checks the URL's options

        return SentinelTransport(url)
    if scheme == "memory":
        from .memory import MemoryTransport

        return MemoryTransport(url)
    raise ValueError(
        f"unsupported transport URL {url!r}: expected redis://, rediss://, unix://, "
        "redis+cluster://, redis+sentinel:// or memory://"
    )
