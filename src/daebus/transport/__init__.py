"""Transports: how bytes get from a publisher to the subscribers of a channel.

:func:`transport_from_url` builds the one a URL names, and refuses a Redis URL with a
query option the transport would ignore (:func:`check_url_options`).
:class:`RedisTransport` is imported on first use: it loads redis-py, which takes
longer to import than the rest of daebus, and a program that only imports daebus
(``daebus --help``, a ``memory://`` test) does not need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from ..exceptions import SetupError
from .base import BatchEnd, ChannelReader, Delivery, DeliveryHandler, Subscription, Transport

if TYPE_CHECKING:
    from .redis import RedisTransport

__all__ = [
    "REDIS_URL_OPTIONS",
    "TLS_URL_OPTIONS",
    "BatchEnd",
    "ChannelReader",
    "Delivery",
    "DeliveryHandler",
    "RedisTransport",
    "Subscription",
    "Transport",
    "check_url_options",
    "transport_from_url",
]

_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "valkey", "valkeys"})
_TLS_SCHEMES = frozenset({"rediss", "valkeys"})

#: The query options of a Redis URL that the transport's connections honour: what
#: ``Endpoint.from_url`` (transport/_resp.py) reads. redis-py's own client (``app.cache``)
#: would honour more (``client_name``, ``protocol``, ``socket_timeout``...), so a URL with
#: any other option would configure the cache and not the transport: it is refused.
REDIS_URL_OPTIONS = frozenset({"db", "username", "password"})
#: The options of the TLS context, read for ``rediss://`` (and ``valkeys://``) only.
TLS_URL_OPTIONS = frozenset(
    {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname"}
)


def __getattr__(name: str) -> Any:
    if name == "RedisTransport":
        from .redis import RedisTransport

        return RedisTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_url_options(url: str) -> None:
    """Refuse a Redis URL with a query option the Redis transport does not honour.

    Honoured: :data:`REDIS_URL_OPTIONS`, and :data:`TLS_URL_OPTIONS` on ``rediss://``
    and ``valkeys://``. A URL of another scheme is not checked here.

    Raises:
        SetupError: the URL has another option; the message names it.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _REDIS_SCHEMES or not parts.query:
        return
    honoured = REDIS_URL_OPTIONS | TLS_URL_OPTIONS if scheme in _TLS_SCHEMES else REDIS_URL_OPTIONS
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        if name in honoured:
            continue
        if name in TLS_URL_OPTIONS:
            raise SetupError(
                f"the Redis URL option {name!r} applies to rediss:// URLs only, "
                f"not to {scheme}:// ones"
            )
        raise SetupError(
            f"the Redis URL option {name!r} is not supported: daebus's Redis transport "
            f"would ignore it. Supported: {', '.join(sorted(REDIS_URL_OPTIONS))}; on "
            f"rediss:// also {', '.join(sorted(TLS_URL_OPTIONS))}"
        )


def transport_from_url(url: str) -> Transport:
    """Build the transport a URL names.

    ``redis://``, ``rediss://``, ``unix://``, ``valkey://`` and ``valkeys://`` are Redis
    pub/sub; ``memory://`` (or ``memory://<name>``) is the in-process broker of that name.

    Raises:
        SetupError: a Redis URL has a query option the transport does not honour
            (see :func:`check_url_options`).
        ValueError: the scheme is none of those, or the URL is malformed.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in _REDIS_SCHEMES:
        check_url_options(url)
        from .redis import RedisTransport

        return RedisTransport(url)
    if scheme == "memory":
        from .memory import MemoryTransport

        return MemoryTransport(url)
    raise ValueError(
        f"unsupported transport URL {url!r}: expected redis://, rediss://, unix:// or memory://"
    )
