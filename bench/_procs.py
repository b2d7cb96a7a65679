"""The bench's child processes: started, awaited until subscribed, and always killed.

Every child runs ``bench/_services.py ROLE ...`` in its own session (so a Ctrl-C in the
terminal reaches only the bench, which then stops them in order), dies with the bench
(``PR_SET_PDEATHSIG``) and ends by itself after ``ttl`` seconds (``signal.alarm``), so
nothing outlives a bench killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import urlparse

import redis

SERVICES = Path(__file__).resolve().parent / "_services.py"

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> object | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: only the already-loaded prctl.
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)  # type: ignore[operator]


def check_loopback(url: str) -> None:
    """Refuse any server that is not on this machine (a loopback address or a socket)."""
    parsed = urlparse(url)
    if parsed.scheme in {"unix"}:
        return
    host = parsed.hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise SystemExit(f"refusing {url!r}: the bench only talks to loopback addresses")


class Child:
    """One child process and its log file."""

    def __init__(self, role: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.role = role
        self.process = process
        self.log = log

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        return f"<Child {self.role} pid={self.pid}>"


class Processes:
    """Starts children for one server; a context manager that stops them all on exit."""

    def __init__(self, url: str, ttl: float) -> None:
        self.url = url
        self.ttl = ttl
        self.children: list[Child] = []  # still running
        self.started: list[Child] = []  # ever
        #: What the children complained of in their logs, once closed (see complaints).
        self.complained: list[str] = []
        self._dir = tempfile.TemporaryDirectory(prefix="daebus-bench-")
        self.dir = Path(self._dir.name)
        self._client = redis.Redis.from_url(url)

    def spawn(
        self, role: str, *args: str, python: str | None = None, script: Path = SERVICES
    ) -> Child:
        """Start ``python script role --url URL --ttl TTL args...``.

        By default the bench's own python runs ``bench/_services.py``; another script
        (run by another virtualenv's python) takes the same first three arguments.
        """
        log = self.dir / f"{role}-{len(self.started)}.log"
        env = dict(os.environ, DAEBUS_REDIS_URL=self.url, PYTHONUNBUFFERED="1")
        command = [
            python or sys.executable,
            str(script),
            role,
            "--url",
            self.url,
            "--ttl",
            str(int(self.ttl)),
            *args,
        ]
        with log.open("wb") as out:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # only calls prctl
            )
        child = Child(role, process, log)
        self.children.append(child)
        self.started.append(child)
        return child

    def wait_subscribed(
        self, channel: str, count: int = 1, timeout: float = 20.0, watch: Sequence[Child] = ()
    ) -> None:
        """Wait until ``channel`` has ``count`` subscribers (PUBSUB NUMSUB)."""
        deadline = time.monotonic() + timeout
        while True:
            ((_, subscribers),) = self._client.pubsub_numsub(channel)
            if int(subscribers) >= count:
                return
            for child in watch:
                if not child.alive():
                    raise RuntimeError(
                        f"{child!r} exited with {child.process.returncode}:\n{child.log_tail()}"
                    )
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {c!r}\n{c.log_tail()}" for c in watch)
                raise RuntimeError(f"{channel!r} has {subscribers}/{count} subscribers\n{tails}")
            time.sleep(0.02)

    def wait_file(self, path: Path, child: Child, timeout: float = 20.0) -> None:
        """Wait until ``child`` creates ``path`` (how idle callers say they are ready)."""
        deadline = time.monotonic() + timeout
        while not path.exists():
            if not child.alive():
                raise RuntimeError(f"{child!r} exited:\n{child.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{child!r} not ready in {timeout}s:\n{child.log_tail()}")
            time.sleep(0.02)

    def stop(self, *children: Child, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL whoever has not exited within ``timeout``."""
        for child in children:
            if child.alive():
                with contextlib.suppress(ProcessLookupError):
                    child.process.terminate()
        deadline = time.monotonic() + timeout
        for child in children:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                child.process.wait()
            if child in self.children:
                self.children.remove(child)

    def complaints(self, limit: int = 10) -> list[str]:
        """Tracebacks, errors and warnings the children logged (they should log none)."""
        found = []
        for child in self.started:
            try:
                lines = child.log.read_text(errors="replace").splitlines()
            except OSError:
                continue
            for line in lines:
                if "Traceback" in line or " ERROR " in line or " WARNING " in line:
                    found.append(f"{child.role} (pid {child.pid}): {line.strip()}")
        return found[:limit]

    def close(self) -> None:
        try:
            self.stop(*list(self.children))
            self.complained = self.complaints()
            for line in self.complained:
                print(f"child log: {line}", file=sys.stderr)
        finally:
            self._client.close()
            self._dir.cleanup()

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
