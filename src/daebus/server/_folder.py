"""The user's private folder for the shared server: where it is, and why to trust it.

In a shared temp folder another user can create ``daebus-<uid>`` first, as a folder or as
a symlink to one, with a server of their own in it. Nothing in the folder may be used
before :func:`check_private_dir` has passed, and its files are opened with
:func:`open_own_file`, never through a symlink.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

from ..exceptions import TransportError

__all__ = ["ENV_RUNTIME_DIR", "check_private_dir", "open_own_file", "runtime_dir"]

ENV_RUNTIME_DIR = "DAEBUS_RUNTIME_DIR"


def runtime_dir() -> Path:
    """The user's folder for the shared server (not created here).

    ``$DAEBUS_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/daebus``, else ``daebus-<uid>`` in
    the temp folder.
    """
    override = os.environ.get(ENV_RUNTIME_DIR)
    if override:
        return Path(override).expanduser().resolve()
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "daebus"
    return Path(tempfile.gettempdir()) / f"daebus-{os.getuid()}"


def check_private_dir(path: Path, *, create: bool) -> bool:
    """Whether ``path`` is a folder of the user's own, made private (mode 700) if it was not.

    Created when ``create``; else False when it does not exist. Another user can create
    the folder first in a shared temp folder, as a folder or as a symlink to one, with a
    server of their own in it: nothing in the folder may be used before this check.

    Raises:
        TransportError: ``path`` is a symlink, not a folder, or another user's.
    """
    if create:
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700, parents=True)
    try:
        # O_NOFOLLOW: a symlink is refused, not followed; the checks and the chmod then
        # apply to the folder opened, which cannot be swapped for another meanwhile.
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        if create:
            raise
        return False
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        if stat.S_ISLNK(path.lstat().st_mode):
            raise TransportError(
                f"{path} is a symlink, not a folder: refusing it for the shared server "
                f"(another user may have made it); remove it, or set ${ENV_RUNTIME_DIR} "
                f"to a folder of yours"
            ) from None
        raise TransportError(
            f"{path} is not a folder; set ${ENV_RUNTIME_DIR} to a folder of yours"
        ) from None
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise TransportError(
                f"{path} belongs to another user (uid {info.st_uid}): refusing it for the "
                f"shared server; set ${ENV_RUNTIME_DIR} to a folder of yours"
            )
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return True


def open_own_file(path: Path, flags: int) -> int:
    """``os.open`` a regular file of the user's own (created mode 600), never via a symlink.

    Raises:
        TransportError: ``path`` is a symlink, not a regular file, or another user's.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise TransportError(
            f"{path} is a symlink: refusing it; remove it, or set ${ENV_RUNTIME_DIR} "
            f"to another folder"
        ) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
        os.close(fd)
        raise TransportError(
            f"{path} is not a file of yours: refusing it; remove it, or set "
            f"${ENV_RUNTIME_DIR} to another folder"
        )
    return fd
