"""Health of the server daebus runs on: is it up, how loaded, and how far behind are groups.

For a monitoring endpoint, a readiness probe or a cron job::

    from daebus import health_stats, ping

    if not ping():
        alert("Redis is down")
    stats = health_stats(channels=["orders"])
    for group, state in stats["channels"]["orders"]["groups"].items():
        print(group, state["lag"], state["pending"], state["dead_letters"])

Every call waits at most about ``timeout`` seconds for the server (connecting, and
then each command), and never retries: a server that is down or hung makes
:func:`ping` return False and :func:`health_stats` say ``healthy: False`` with the
error, promptly, rather than block or raise. On ``memory://`` there is no server: it
is always healthy, and the server's own figures are None.

The server is the one the library would use (``$DAEBUS_REDIS_URL``, ...; see
:func:`daebus.config.resolve_redis_url`) unless ``redis_url`` names one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import protocol
from ._admin import Admin, open_admin
from .exceptions import DaebusError

__all__ = ["DEFAULT_TIMEOUT", "health_stats", "ping", "subscriber_counts"]

#: How long a health call waits for the server, in seconds, unless told otherwise.
DEFAULT_TIMEOUT = 2.0

_STREAM_PREFIX = protocol.stream_key("")  # "daebus:stream:"


def ping(redis_url: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Whether the server answers ``PING`` within ``timeout`` seconds."""
    try:
        with open_admin(redis_url, timeout=timeout) as admin:
            admin.ping()
    except (DaebusError, ValueError, OSError):
        return False
    return True


def health_stats(
    redis_url: str | None = None,
    channels: Iterable[str] | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """The server's health, and where each durable channel's groups stand.

    ``channels`` are the durable channels to describe; None means every one that has a
    stream. The result::

        {
            "healthy": True,
            "connected_clients": 12,
            "used_memory": 1456312,
            "used_memory_human": "1.39M",
            "pattern_subscriptions": 3,   # PUBSUB NUMPAT
            "channels": {
                "orders": {
                    "length": 1042,       # messages the stream holds
                    "groups": {
                        "billing": {
                            "consumers": 2,     # instances that read as the group
                            "pending": 1,       # handed out, not yet acknowledged
                            "lag": 0,           # not yet read (None: unknown)
                            "last_delivered_id": "1767225600000-0",
                            "dead_letters": 3,  # in its dead-letter stream
                        },
                    },
                },
            },
        }

    When the server cannot be reached in time: ``{"healthy": False, "error": "..."}``.
    A channel without a stream has length 0 and no groups.
    """
    try:
        with open_admin(redis_url, timeout=timeout) as admin:
            admin.ping()
            stats: dict[str, Any] = {"healthy": True, **admin.server_stats()}
            stats["pattern_subscriptions"] = admin.patterns()
            if channels is None:
                names = [key[len(_STREAM_PREFIX) :] for key in admin.stream_names(_STREAM_PREFIX)]
            else:
                names = list(dict.fromkeys(channels))
            stats["channels"] = {channel: _channel_stats(admin, channel) for channel in names}
            return stats
    except (DaebusError, ValueError, OSError) as exc:
        return {"healthy": False, "error": str(exc) or type(exc).__name__}


def _channel_stats(admin: Admin, channel: str) -> dict[str, Any]:
    stream = protocol.stream_key(channel)
    groups = {}
    for group in admin.stream_groups(stream):
        name = group["name"]
        groups[name] = {
            "consumers": group["consumers"],
            "pending": group["pending"],
            "lag": group["lag"],
            "last_delivered_id": group["last-delivered-id"],
            "dead_letters": admin.stream_length(protocol.dead_letter_key(channel, name)),
        }
    return {"length": admin.stream_length(stream), "groups": groups}


def subscriber_counts(
    channels: Iterable[str], redis_url: str | None = None, *, timeout: float = DEFAULT_TIMEOUT
) -> dict[str, int]:
    """How many connections subscribe to each channel (``PUBSUB NUMSUB``).

    A running service counts once for each channel it listens on by name; listeners of
    glob patterns are not counted here (``health_stats()["pattern_subscriptions"]``
    counts the patterns).

    Raises:
        TransportError: the server cannot be reached within ``timeout``.
    """
    with open_admin(redis_url, timeout=timeout) as admin:
        return admin.subscribers(list(dict.fromkeys(channels)))
