"""Transports: how bytes get from a publisher to the subscribers of a channel."""

from __future__ import annotations

from .base import BatchEnd, ChannelReader, Delivery, DeliveryHandler, Subscription, Transport
from .redis import RedisTransport

__all__ = [
    "BatchEnd",
    "ChannelReader",
    "Delivery",
    "DeliveryHandler",
    "RedisTransport",
    "Subscription",
    "Transport",
    "transport_from_url",
]


def transport_from_url(url: str) -> Transport:
    """Build the transport a URL names.

    ``redis://``, ``rediss://``, ``unix://``, ``valkey://`` and ``valkeys://`` are Redis
    pub/sub; ``memory://`` (or ``memory://<name>``) is the in-process broker of that name.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in {"redis", "rediss", "unix", "valkey", "valkeys"}:
        return RedisTransport(url)
    if scheme == "memory":
        from .memory import MemoryTransport

        return MemoryTransport(url)
    raise ValueError(
        f"unsupported transport URL {url!r}: expected redis://, rediss://, unix:// or memory://"
    )
