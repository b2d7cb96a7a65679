"""Replica acknowledgement of durable writes: ``WAIT`` after the write, on its connection.

A master answers a write as soon as it has it; its replicas copy it afterwards. A master
that dies in between takes the write with it, and the replica promoted in its place never
had it. ``WAIT numreplicas timeout`` blocks the client that sent it until that many
replicas have everything the client wrote so far, or until the timeout: sent after the
write, on the same connection (so to the same node), it tells whether the write would
survive its master.
"""

from __future__ import annotations

from typing import Any

from ..exceptions import ReplicationError, TransportError

__all__ = [
    "DEFAULT_REPLICA_TIMEOUT_MS",
    "MAX_REPLICA_TIMEOUT_MS",
    "check_acknowledged",
    "check_replicas",
    "wait_command",
]

#: How long a durable send waits for its replicas unless told otherwise.
DEFAULT_REPLICA_TIMEOUT_MS = 1000
#: The longest wait allowed: a connection waiting for WAIT is not taken as dead sooner.
MAX_REPLICA_TIMEOUT_MS = 60_000


def check_replicas(replicas: Any, timeout_ms: Any) -> None:
    """Refuse a replica count or a timeout that WAIT could not be given.

    Raises:
        ValueError: ``replicas`` is not an int of at least 0, or ``timeout_ms`` is not
            an int between 1 and :data:`MAX_REPLICA_TIMEOUT_MS`.
    """
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise ValueError(f"replicas must be an int of at least 0, got {replicas!r}")
    if (
        not isinstance(timeout_ms, int)
        or isinstance(timeout_ms, bool)
        or not 0 < timeout_ms <= MAX_REPLICA_TIMEOUT_MS
    ):
        raise ValueError(
            f"the replica timeout must be more than 0 and at most "
            f"{MAX_REPLICA_TIMEOUT_MS // 1000} s, got {timeout_ms!r} ms"
        )


def wait_command(replicas: int, timeout_ms: int) -> tuple[str, int, int]:
    """``WAIT replicas timeout_ms``: send it after the writes it is about."""
    return ("WAIT", replicas, timeout_ms)


def check_acknowledged(reply: Any, replicas: int, timeout_ms: int, where: str) -> None:
    """Raise unless ``reply`` (WAIT's) says at least ``replicas`` replicas have the writes.

    Raises:
        ReplicationError: fewer replicas acknowledged them in time.
        TransportError: WAIT itself failed (``reply`` is its error).
    """
    if isinstance(reply, BaseException):
        raise TransportError(f"WAIT after the write to {where} failed: {reply}") from reply
    acknowledged = int(reply)
    if acknowledged < replicas:
        raise ReplicationError(
            f"{acknowledged} of the {replicas} replica(s) asked for acknowledged the write "
            f"to {where} within {timeout_ms} ms: the master has it, but loses it if it "
            "fails before a replica copies it",
            acknowledged=acknowledged,
            wanted=replicas,
        )
