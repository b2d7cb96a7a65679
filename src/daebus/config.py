"""Where Redis is: the configured URL, else a Redis on localhost, else the shared server.

A process holding a claim on the shared server (``daebus demo --keep-running``) makes
unconfigured processes skip localhost for the shared server while it lives, so that the
next command finds its services (:mod:`daebus.server._claims`).

With nothing configured, whatever answers PING on localhost:6379 is trusted: on a
machine without a Redis of its own, any local user could listen there first. Setting
the URL to ``embedded`` skips that probe and goes straight to the user's shared server.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING

from .exceptions import TransportError
from .transport._url import redact_url

if TYPE_CHECKING:
    from .server import SharedServer

__all__ = [
    "DEFAULT_REDIS_URL",
    "EMBEDDED",
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
#: The URL that names the user's shared embedded server, without probing localhost.
EMBEDDED = "embedded"

# Resolved once per process: every app and caller of a process then agrees on a server,
# even if another Redis appears on localhost later.
_lock = threading.Lock()
# By probed URL: the reason it is not used (no answer, or one that wants a password), or
# None when it answered.
_probed: dict[str, str | None] = {}
# The shared server found last, by the settings that locate its folder (server.py's
# runtime_dir): the server, its pid and URL. A script's every broadcast.send() resolves
# the URL, so that path must stay short: this checks the known server's pid and socket
# file directly, instead of building its paths and resolving its folder on every send.
_shared_known: dict[tuple[str | None, str | None], tuple[SharedServer, int, str]] = {}
_announced: set[tuple[str, str]] = set()


def resolve_redis_url(
    redis_url: str | None = None,
    redis_host: str | None = None,
    redis_port: int | None = None,
) -> str:
    """Pick the Redis URL, and log which one and why (once per process).

    In order: ``redis_url``; ``redis_host``/``redis_port``; ``$DAEBUS_REDIS_URL``;
    the user's shared embedded server while a process claims it (``daebus demo
    --keep-running``: see :func:`daebus.server.claim_shared_server`);
    ``redis://localhost:6379/0`` (``$DAEBUS_DEFAULT_REDIS_URL`` if set) when it answers
    PING within :data:`PROBE_TIMEOUT`; else the user's shared embedded server
    (:class:`daebus.server.SharedServer`), started if it does not run, as a
    ``unix://`` URL. A configured URL is returned as is, even if nothing answers there:
    it is retried and reported, never replaced by the embedded server.

    ``embedded`` (:data:`EMBEDDED`) as ``redis_url`` or ``$DAEBUS_REDIS_URL`` names the
    shared server: localhost is not probed. A default server that answers but wants a
    password is not used: the shared server is, with a warning saying why.

    The probe runs once per process, so all apps and callers of a process agree; the
    shared server is re-checked cheaply on each call and started again if it has gone.

    Raises:
        TransportError: Nothing is configured, nothing answers on localhost, and the
            shared server cannot be started.
    """
    if redis_url == EMBEDDED:
        return _shared_server_url("from the redis_url argument")
    if redis_url:
        return _announce(redis_url, "the redis_url argument")
    if redis_host is not None or redis_port is not None:
        url = f"redis://{redis_host or 'localhost'}:{redis_port or 6379}/0"
        return _announce(url, "the redis_host/redis_port arguments")
    configured = os.environ.get(ENV_REDIS_URL)
    if configured == EMBEDDED:
        return _shared_server_url(f"from ${ENV_REDIS_URL}")
    if configured:
        return _announce(configured, f"${ENV_REDIS_URL}")
    return _implicit_url()


def _announce(url: str, reason: str) -> str:
    with _lock:
        if (url, reason) in _announced:
            return url
        _announced.add((url, reason))
    log.info("using %s (from %s)", redact_url(url), reason)
    return url


def _implicit_url() -> str:
    probe = os.environ.get(ENV_DEFAULT_REDIS_URL) or DEFAULT_REDIS_URL
    with _lock:
        if probe in _probed:
            refused = _probed[probe]
        else:
            refused = _probed[probe] = _claimed() or _probe(probe)
            if refused is None:
                log.info("using %s (answered PING; no URL configured)", redact_url(probe))
        if refused is None:
            return probe
        return _shared_server_url(refused)


def _claimed() -> str | None:
    """Why localhost is skipped for the shared server (a live claim on it), or None."""
    # Imported here, as the probe's redis-py is: a configured URL never needs either.
    from .server import live_claim

    claim = live_claim()
    return None if claim is None else f"{claim.by} (pid {claim.pid}) claims it"


def _probe(url: str) -> str | None:
    """Why the server at ``url`` is not to be used, or None when it answered PING."""
    # Imported here, as the shared server is: redis-py is slow to import, and a
    # configured URL (or memory://) never needs the probe.
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(
        url,
        socket_connect_timeout=PROBE_TIMEOUT,
        socket_timeout=PROBE_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        client.ping()
    except (redis.AuthenticationError, redis.ResponseError) as exc:
        # A server nobody named is not one to send credentials to, nor one to use
        # without them: the shared server is used instead, and the log says why.
        if isinstance(exc, redis.AuthenticationError) or "auth" in str(exc).lower():
            refusal = "wants a password"
        else:
            refusal = f"refused PING ({exc})"
        log.warning(
            "%s answered but %s: using the shared embedded server instead "
            "(set $%s, password included, to use %s)",
            redact_url(url),
            refusal,
            ENV_REDIS_URL,
            redact_url(url),
        )
        return f"{redact_url(url)} {refusal}"
    except (redis.RedisError, OSError):
        return f"nothing answered on {redact_url(url)}"
    finally:
        client.close()
    return None


def _shared_server_url(why: str) -> str:
    """The shared server's URL, started if need be; ``why`` it is used goes in the log."""
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
        raise TransportError(f"the shared embedded server ({why}) cannot be used: {exc}") from exc
    assert status.pid is not None
    _shared_known[where] = (server, status.pid, status.url)
    how = "started it" if status.started else "already running"
    log.info(
        "using the shared embedded server at %s (%s, pid %d; %s)",
        status.url,
        how,
        status.pid,
        why,
    )
    return status.url
