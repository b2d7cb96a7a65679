"""Where Redis is: the configured URL, else a Redis on localhost, else the shared server."""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .exceptions import TransportError

if TYPE_CHECKING:
    from .server import SharedServer

__all__ = [
    "DEFAULT_REDIS_URL",
    "ENV_DEFAULT_REDIS_URL",
    "ENV_REDIS_URL",
    "PROBE_TIMEOUT",
    "resolve_redis_url",
]

log = logging.getLogger(__name__)

ENV_REDIS_URL = "DAEBUS_REDIS_URL"
#: Names the server probed when nothing is configured (tests point it at a dead port).
ENV_DEFAULT_REDIS_URL = "DAEBUS_DEFAULT_REDIS_URL"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
#: Seconds the default server gets to answer PING before the shared server is used.
PROBE_TIMEOUT = 0.3

# Resolved once per process: every app and caller of a process then agrees on a server,
# even if another Redis appears on localhost later.
_lock = threading.Lock()
_probed: dict[str, bool] = {}
# The shared server found last, by the settings that locate its folder (server.py's
# runtime_dir): the server, its pid and URL. A script's every broadcast.send() resolves
# the URL; this checks the server's files without importing or building paths again
# (366k -> 94k instructions per send).
_shared_known: dict[tuple[str | None, str | None], tuple[SharedServer, int, str]] = {}
_announced: set[tuple[str, str]] = set()


def resolve_redis_url(
    redis_url: str | None = None,
    redis_host: str | None = None,
    redis_port: int | None = None,
) -> str:
    """Pick the Redis URL, and log which one and why (once per process).

    In order: ``redis_url``; ``redis_host``/``redis_port``; ``$DAEBUS_REDIS_URL``;
    ``redis://localhost:6379/0`` (``$DAEBUS_DEFAULT_REDIS_URL`` if set) when it answers
    PING within :data:`PROBE_TIMEOUT`; else the user's shared embedded server
    (:class:`daebus.server.SharedServer`), started if it does not run, as a
    ``unix://`` URL. A configured URL is returned as is, even if nothing answers there:
    it is retried and reported, never replaced by the embedded server.

    The probe runs once per process, so all apps and callers of a process agree; the
    shared server is re-checked cheaply on each call and started again if it has gone.

    Raises:
        TransportError: Nothing is configured, nothing answers on localhost, and the
            shared server cannot be started.
    """
    if redis_url:
        return _announce(redis_url, "the redis_url argument")
    if redis_host is not None or redis_port is not None:
        url = f"redis://{redis_host or 'localhost'}:{redis_port or 6379}/0"
        return _announce(url, "the redis_host/redis_port arguments")
    configured = os.environ.get(ENV_REDIS_URL)
    if configured:
        return _announce(configured, f"${ENV_REDIS_URL}")
    return _implicit_url()


def _announce(url: str, reason: str) -> str:
    with _lock:
        if (url, reason) in _announced:
            return url
        _announced.add((url, reason))
    log.info("using %s (from %s)", _redacted(url), reason)
    return url


def _redacted(url: str) -> str:
    """``url`` with its password masked, for the log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


def _implicit_url() -> str:
    probe = os.environ.get(ENV_DEFAULT_REDIS_URL) or DEFAULT_REDIS_URL
    with _lock:
        answered = _probed.get(probe)
        if answered is None:
            answered = _probed[probe] = _answers_ping(probe)
            if answered:
                log.info("using %s (answered PING; no URL configured)", _redacted(probe))
        if answered:
            return probe
        return _shared_server_url(probe)


def _answers_ping(url: str) -> bool:
    client = redis.Redis.from_url(
        url,
        socket_connect_timeout=PROBE_TIMEOUT,
        socket_timeout=PROBE_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        client.ping()
    except (redis.AuthenticationError, redis.ResponseError):
        return True  # a Redis that wants credentials: the user's to configure, not to skip
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()
    return True


def _shared_server_url(probe: str) -> str:
    where = (os.environ.get("DAEBUS_RUNTIME_DIR"), os.environ.get("XDG_RUNTIME_DIR"))
    known = _shared_known.get(where)
    if known is not None:
        server, pid, url = known
        if server.looks_alive(pid):
            return url
    # Imported here: the shared server needs fcntl and starts processes; most runs never
    # get this far.
    from .server import SharedServer

    server = SharedServer()
    try:
        status = server.ensure()
    except TransportError as exc:
        raise TransportError(
            f"no Redis configured, nothing answered on {_redacted(probe)}, and the shared embedded "
            f"server could not be started: {exc}"
        ) from exc
    assert status.pid is not None
    _shared_known[where] = (server, status.pid, status.url)
    how = "started it" if status.started else "already running"
    log.info(
        "using the shared embedded server at %s (%s, pid %d; nothing answered on %s)",
        status.url,
        how,
        status.pid,
        _redacted(probe),
    )
    return status.url
