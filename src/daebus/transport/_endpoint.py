"""Where and how to connect, as a Redis URL says, and the URL options daebus honours.

URLs are parsed by redis-py (``redis.connection.parse_url``), so ``redis://``,
``rediss://`` and ``unix://`` mean exactly what they mean to redis-py; an option that
daebus's own connections would not honour is refused rather than silently ignored.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..exceptions import SetupError, TransportError

__all__ = [
    "REDIS_URL_OPTIONS",
    "TLS_URL_OPTIONS",
    "Endpoint",
    "NotMasterError",
    "check_role",
    "check_url_options",
]

_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "valkey", "valkeys"})
_TLS_SCHEMES = frozenset({"rediss", "valkeys"})

#: The query options of a Redis URL that the transport's connections honour: what
#: :meth:`Endpoint.from_url` reads. redis-py's own client (``app.cache``)
#: would honour more (``client_name``, ``protocol``, ``socket_timeout``...), so a URL with
#: any other option would configure the cache and not the transport: it is refused.
REDIS_URL_OPTIONS = frozenset({"db", "username", "password"})
#: The options of the TLS context, read for ``rediss://`` (and ``valkeys://``) only.
TLS_URL_OPTIONS = frozenset(
    {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname"}
)


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


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect, parsed once from a URL."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl_context: ssl.SSLContext | None = None
    #: Ask the node its ``ROLE`` as a connection is made, and refuse a replica: set where
    #: the address came from sentinels, which may still name a demoted master.
    must_be_master: bool = False

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        """Parse ``redis://``, ``rediss://`` or ``unix://`` the way redis-py does.

        Raises:
            SetupError: the URL has a query option that is not honoured.
        """
        check_url_options(url)
        # redis-py is loaded here, when a connection is made: the option check above is
        # what ``import daebus`` and ``daebus --help`` need, and they must stay quick.
        from redis.connection import SSLConnection, parse_url

        options = parse_url(url)  # type: ignore[no-untyped-call]
        context = None
        if options.get("connection_class") is SSLConnection:
            context = _ssl_context(options)
        return cls(
            host=str(options.get("host") or "localhost"),
            port=int(options.get("port") or 6379),
            path=options.get("path"),
            db=int(options.get("db") or 0),
            username=options.get("username"),
            password=options.get("password"),
            ssl_context=context,
        )

    def __str__(self) -> str:
        return f"unix://{self.path}" if self.path else f"{self.host}:{self.port}"


class NotMasterError(TransportError):
    """The node a connection reached is not a master (so sentinels are asked again)."""


def check_role(endpoint: Endpoint, reply: Any) -> None:
    """Raise :class:`NotMasterError` unless ``reply`` (to ``ROLE``) says master."""
    role = bytes(reply[0]).decode("ascii", "replace") if reply else "?"
    if role != "master":
        raise NotMasterError(f"{endpoint} is a {role}, not the master")


def _ssl_context(options: dict[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    requirement = str(options.get("ssl_cert_reqs", "required")).lower()
    if requirement in {"none", "cert_none"}:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif requirement in {"optional", "cert_optional"}:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_OPTIONAL
    if str(options.get("ssl_check_hostname", "")).lower() in {"false", "0", "no"}:
        context.check_hostname = False
    return context
