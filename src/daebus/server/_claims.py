"""Claims on the implicit choice of server: the demo's services, found by the next command.

With nothing configured, a process uses a Redis that answers on localhost:6379, else the
user's shared server (:func:`daebus.config.resolve_redis_url`). ``daebus demo`` runs on
the shared server even when a Redis answers on 6379, which may run real services called
``shop`` or ``inventory``; so ``daebus call inventory stock`` would look on 6379 and find
nobody. While it keeps running, the demo therefore *claims* the implicit choice: a file
``claims/<pid>`` in the runtime folder. A process that resolves the server with nothing
configured looks for a live claim before it probes localhost, and uses the shared server
while one is held: every command, caller script and service started meanwhile finds the
demo's services. A configured URL (``--redis-url``, ``$DAEBUS_REDIS_URL``) is never
affected.

A claim is trusted only in the private runtime folder (:mod:`._folder`), as a regular file
of the user's own, while its process lives: the file holds the process's start time, so
that a pid reused after a crash does not keep a stale claim alive.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..exceptions import TransportError
from ._folder import check_private_dir, open_own_file, runtime_dir

__all__ = ["CLAIMS_NAME", "Claim", "claim_shared_server", "live_claim"]

logger = logging.getLogger("daebus.server")

CLAIMS_NAME = "claims"


@dataclass(frozen=True)
class Claim:
    """A live claim: the process holding it, and what it is."""

    pid: int
    by: str


@contextlib.contextmanager
def claim_shared_server(by: str, directory: Path | None = None) -> Iterator[Claim]:
    """While the block runs, unconfigured processes use the shared server (see above).

    ``by`` names the claimant in their logs (``daebus demo``).

    Raises:
        TransportError: The runtime folder is unusable (a symlink, another user's).
    """
    folder = (directory if directory is not None else runtime_dir()) / CLAIMS_NAME
    check_private_dir(folder.parent, create=True)
    check_private_dir(folder, create=True)
    pid = os.getpid()
    path = folder / str(pid)
    fd = open_own_file(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, f"{_started(pid) or ''}\n{' '.join(by.split())}\n".encode())
    finally:
        os.close(fd)
    try:
        yield Claim(pid, by)
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def live_claim(directory: Path | None = None) -> Claim | None:
    """A claim whose process lives, if any; stale claims found on the way are removed.

    Never raises: a folder that cannot be trusted or read holds no claim.
    """
    folder = (directory if directory is not None else runtime_dir()) / CLAIMS_NAME
    try:
        if not check_private_dir(folder.parent, create=False):
            return None
        if not check_private_dir(folder, create=False):
            return None
        names = sorted(os.listdir(folder))
    except (OSError, TransportError) as exc:
        logger.debug("no claim read in %s: %s", folder, exc)
        return None
    for name in names:
        if not name.isdigit():
            continue
        claim = _read(folder / name, int(name))
        if claim is not None:
            return claim
    return None


def _read(path: Path, pid: int) -> Claim | None:
    """The claim in ``path`` if it is the user's own and its process lives; else None."""
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            return None
        started, _, by = path.read_text("utf-8").partition("\n")
    except (OSError, UnicodeDecodeError):
        return None
    now = _started(pid)
    if now is None or (started and started != now):
        # Its process is gone (or the pid is another process's now): stale.
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    return Claim(pid, by.strip() or "another process")


def _started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot); "" where /proc cannot tell.

    None when the process does not exist.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            fields = file.read().rsplit(b")", 1)[1].split()
    except FileNotFoundError:
        return "" if not os.path.isdir("/proc/self") else None
    except (OSError, IndexError):
        return ""
    # Field 22 of stat(5) is the start time; fields[0] is field 3 (the state).
    if fields[0] == b"Z":
        return None
    return fields[19].decode()
