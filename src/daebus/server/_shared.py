"""The user's shared server: one for every daebus process of a user on a machine.

It is what daebus falls back to when no Redis is configured and nothing answers on
localhost:6379 (see :func:`daebus.config.resolve_redis_url`). It lives in a folder
private to the user (:mod:`._folder`), listens only on the unix socket ``daebus.sock``
there (no TCP port), writes nothing to disk but its pid file and its log
(``server.log``), and is started under an exclusive lock on ``daebus.lock``, so that
processes starting together start exactly one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..exceptions import TransportError
from ._binary import LIMITS, require_binary
from ._folder import ENV_RUNTIME_DIR, check_private_dir, open_own_file, runtime_dir

__all__ = [
    "LOCK_NAME",
    "LOG_NAME",
    "PID_NAME",
    "SOCKET_NAME",
    "SharedServer",
    "SharedServerStatus",
    "ensure_shared_server",
    "run_shared_server",
    "shared_server_status",
    "shared_server_url",
    "stop_shared_server",
]

logger = logging.getLogger("daebus.server")


SOCKET_NAME = "daebus.sock"
PID_NAME = "daebus.pid"
LOCK_NAME = "daebus.lock"
LOG_NAME = "server.log"

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0
# Long enough for another process to start the server while we wait for the lock.
_LOCK_TIMEOUT = 3 * _START_TIMEOUT
_ANSWER_TIMEOUT = 1.0
# sun_path holds 108 bytes on Linux and 104 on macOS, the terminating NUL included.
_MAX_SOCKET_PATH = 103


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A daemon whose parent (init in some containers) does not reap it stays a zombie,
    # which signal 0 cannot tell from a live process.
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)  # no buffered file: this runs often
        try:
            state = os.read(fd, 4096).rsplit(b")", 1)[1].split()[0]
        finally:
            os.close(fd)
    except (FileNotFoundError, ProcessLookupError):
        return False  # reaped between the signal and the read: gone
    except (OSError, IndexError):
        return True  # no /proc to ask: signal 0 is all there is
    return state != b"Z"


@dataclass(frozen=True)
class SharedServerStatus:
    """What :class:`SharedServer` found (or did).

    Attributes:
        url: ``unix:///…/daebus.sock``, the URL clients use.
        pid: The server's pid, None when it is not running.
        started: Whether this call started it.
        log: The server's log file (a server run in the foreground logs to its stdout).
    """

    url: str
    pid: int | None
    started: bool
    log: Path

    @property
    def running(self) -> bool:
        """Whether the server answered."""
        return self.pid is not None


class SharedServer:
    """The user's shared server, found by its files in a runtime folder.

    Nothing is kept in the object: every method looks at the socket and the pid file, so
    several objects (and processes) can manage the same server.
    """

    def __init__(self, directory: Path | None = None, *, binary: Path | None = None) -> None:
        self.directory = directory if directory is not None else runtime_dir()
        self.binary = binary
        self.socket_path = self.directory / SOCKET_NAME
        self.pid_path = self.directory / PID_NAME
        self.lock_path = self.directory / LOCK_NAME
        self.log_path = self.directory / LOG_NAME

    def __repr__(self) -> str:
        return f"<SharedServer {self.url}>"

    @property
    def url(self) -> str:
        """``unix:///…/daebus.sock``, whether or not the server runs."""
        return "unix://" + quote(str(self.socket_path))

    def status(self) -> SharedServerStatus:
        """Whether the server answers on its socket, and its pid.

        Raises:
            TransportError: The runtime folder is unusable (see :meth:`ensure`).
        """
        with self._os_errors_reported():
            if not check_private_dir(self.directory, create=False):
                return self._status(None)
            return self._status(self._answering_pid())

    def looks_alive(self, pid: int) -> bool:
        """A check without a round trip: the socket file is there and ``pid`` lives."""
        return os.path.exists(self.socket_path) and _pid_alive(pid)

    def ensure(self, timeout: float = _START_TIMEOUT) -> SharedServerStatus:
        """Start the server unless it answers already, replacing one that died.

        Raises:
            TransportError: No server binary, an unusable runtime folder (a symlink,
                another user's, one that cannot be read), or the server did not answer
                within ``timeout`` seconds.
        """
        with self._os_errors_reported():
            # The folder first: whatever answers on a socket in a folder that is not
            # private to the user may be another user's server.
            self._prepare()
            pid = self._answering_pid()
            if pid is not None:
                return self._status(pid)
            with self._locked():
                # Another process may have started it while we waited for the lock.
                pid = self._answering_pid()
                if pid is not None:
                    return self._status(pid)
                binary = require_binary(self.binary)
                self._clear_stale()
                pid = self._start_detached(binary, timeout)
        logger.info("started the shared %s (pid %d) at %s", binary.name, pid, self.url)
        return self._status(pid, started=True)

    def stop(self, timeout: float = _STOP_TIMEOUT) -> int | None:
        """Stop the server (SIGTERM, then SIGKILL); its pid, or None if it was not running.

        Raises:
            TransportError: The runtime folder is unusable (see :meth:`ensure`).
        """
        with self._os_errors_reported():
            if not check_private_dir(self.directory, create=False):
                return None
            with self._locked():
                pid = self._answering_pid()
                if pid is not None:
                    self._signal(pid, signal.SIGTERM)
                    if not self._wait_gone(pid, timeout):
                        logger.warning(
                            "the shared server (pid %d) ignored SIGTERM; killing it", pid
                        )
                        self._signal(pid, signal.SIGKILL)
                        self._wait_gone(pid, timeout)
                self._clear_stale()
        if pid is not None:
            logger.info("stopped the shared server (pid %d) at %s", pid, self.url)
        return pid

    def run(self, timeout: float = _START_TIMEOUT) -> int:
        """Run the server in the foreground, logging to stdout, until it exits.

        Ctrl-C or SIGTERM stop it cleanly. Returns its exit status.

        Raises:
            TransportError: The shared server is running already, or could not start.
        """
        with self._os_errors_reported():
            self._prepare()
            with self._locked():
                pid = self._answering_pid()
                if pid is not None:
                    raise TransportError(
                        f"the shared server is already running (pid {pid}) at {self.url}"
                    )
                binary = require_binary(self.binary)
                self._clear_stale()
                process = subprocess.Popen(
                    self._command(binary, daemonize=False),
                    stdin=subprocess.DEVNULL,
                    cwd=self.directory,
                )
                try:
                    self._wait_answering(time.monotonic() + timeout, process)
                except BaseException:
                    process.kill()
                    process.wait()
                    raise
        logger.info("running the shared %s (pid %d) at %s", binary.name, process.pid, self.url)
        return _wait_forwarding_signals(process)

    # -- internals -------------------------------------------------------------------

    def _status(self, pid: int | None, *, started: bool = False) -> SharedServerStatus:
        return SharedServerStatus(url=self.url, pid=pid, started=started, log=self.log_path)

    @contextlib.contextmanager
    def _os_errors_reported(self) -> Iterator[None]:
        """Turn an OSError on the folder's files (permission denied, say) into a TransportError."""
        try:
            yield
        except OSError as exc:
            raise TransportError(f"the shared server's folder {self.directory}: {exc}") from exc

    def _prepare(self) -> None:
        check_private_dir(self.directory, create=True)
        if len(os.fsencode(self.socket_path)) > _MAX_SOCKET_PATH:
            raise TransportError(
                f"the socket path {self.socket_path} is too long for a unix socket; "
                f"set ${ENV_RUNTIME_DIR} to a shorter folder"
            )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = open_own_file(self.lock_path, os.O_RDWR | os.O_CREAT)
        try:
            deadline = time.monotonic() + _LOCK_TIMEOUT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise TransportError(
                            f"another process held {self.lock_path} for {_LOCK_TIMEOUT}s"
                        ) from None
                    time.sleep(0.01)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _socket_is_ours(self) -> bool:
        """Whether the socket file is a socket of the user's own (never via a symlink).

        Only the user can make one in a private folder; anything else there was left from
        before the folder was made private, and is removed as stale.
        """
        try:
            info = self.socket_path.lstat()
        except FileNotFoundError:
            return False
        return stat.S_ISSOCK(info.st_mode) and info.st_uid == os.geteuid()

    def _answering_pid(self) -> int | None:
        """The pid of the server answering on the socket; the folder was checked first."""
        if not self._socket_is_ours():
            return None
        client = redis.Redis(
            unix_socket_path=str(self.socket_path),
            socket_timeout=_ANSWER_TIMEOUT,
            socket_connect_timeout=_ANSWER_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            info = client.info("server")
        except (redis.RedisError, OSError):
            return None
        finally:
            client.close()
        return int(info["process_id"])

    def _recorded_pid(self) -> int | None:
        try:
            fd = open_own_file(self.pid_path, os.O_RDONLY)
        except (OSError, TransportError):
            return None
        try:
            return int(os.read(fd, 64).strip())
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)

    def _clear_stale(self) -> None:
        """Remove the socket and pid file of a server that no longer answers."""
        pid = self._recorded_pid()
        if pid is not None or os.path.lexists(self.socket_path):
            state = "alive" if pid is not None and _pid_alive(pid) else "gone"
            logger.info(
                "removing the socket and pid file of a shared server that does not answer "
                "(pid %s, process %s)",
                pid,
                state,
            )
        self.socket_path.unlink(missing_ok=True)
        self.pid_path.unlink(missing_ok=True)

    def _command(self, binary: Path, *, daemonize: bool) -> list[str]:
        command = [
            str(binary),
            "--port", "0",  # no TCP listener: the socket is private to the user
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--pidfile", str(self.pid_path),
            *LIMITS,
        ]  # fmt: skip
        if daemonize:
            return [*command, "--daemonize", "yes", "--logfile", str(self.log_path)]
        return [*command, "--daemonize", "no"]

    def _start_detached(self, binary: Path, timeout: float) -> int:
        """Start a daemonized server that outlives this process; its pid once it answers."""
        deadline = time.monotonic() + timeout
        # The server opens the log itself, by name: it must be a file of ours, not a
        # symlink to a file it would append to.
        log_fd = open_own_file(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        with os.fdopen(log_fd, "ab") as log:
            # The launcher forks the daemon and exits at once; its own errors (bad
            # arguments) go to the log. A new session keeps the terminal's Ctrl-C away.
            launcher = subprocess.Popen(
                self._command(binary, daemonize=True),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.directory,
                start_new_session=True,
            )
            try:
                code = launcher.wait(timeout)
            except subprocess.TimeoutExpired:
                launcher.kill()
                launcher.wait()
                code = -1
        if code != 0:
            raise TransportError(f"{binary} failed to start ({code}): {self._log_tail()}")
        return self._wait_answering(deadline)

    def _wait_answering(
        self, deadline: float, process: subprocess.Popen[bytes] | None = None
    ) -> int:
        while True:
            pid = self._answering_pid()
            if pid is not None:
                return pid
            if process is not None and process.poll() is not None:
                raise TransportError(f"the shared server exited at start ({process.returncode})")
            recorded = self._recorded_pid()
            if process is None and recorded is not None and not _pid_alive(recorded):
                raise TransportError(f"the shared server exited at start: {self._log_tail()}")
            if time.monotonic() >= deadline:
                raise TransportError(
                    f"the shared server did not answer on {self.socket_path} in time: "
                    f"{self._log_tail()}"
                )
            time.sleep(0.01)

    @staticmethod
    def _signal(pid: int, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):  # it may have just exited
            os.kill(pid, signum)

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while _pid_alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def _log_tail(self, lines: int = 10) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"no log at {self.log_path}"
        return f"last lines of {self.log_path}:\n" + "\n".join(tail)


def _wait_forwarding_signals(process: subprocess.Popen[bytes]) -> int:
    """Wait for a foreground server, passing Ctrl-C and SIGTERM on so it shuts down cleanly."""
    # Signal handlers can only be set from the main thread.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = (
        signal.signal(signal.SIGTERM, lambda _signum, _frame: process.terminate())
        if in_main_thread
        else None
    )
    try:
        while True:
            try:
                return process.wait()
            except KeyboardInterrupt:
                # The terminal sent SIGINT to the server too; this covers a lone `kill -INT`.
                if process.poll() is None:
                    process.terminate()
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def ensure_shared_server() -> SharedServerStatus:
    """Start the user's shared server unless it runs (see :meth:`SharedServer.ensure`)."""
    return SharedServer().ensure()


def shared_server_url(start: bool = True) -> str:
    """URL of the user's shared server; starts the server first when ``start``."""
    server = SharedServer()
    if start:
        server.ensure()
    return server.url


def shared_server_status() -> SharedServerStatus:
    """Whether the user's shared server runs, its pid and URL."""
    return SharedServer().status()


def stop_shared_server() -> int | None:
    """Stop the user's shared server; its pid, or None if it was not running."""
    return SharedServer().stop()


def run_shared_server() -> int:
    """Run the user's shared server in the foreground (``daebus server``); its exit status."""
    return SharedServer().run()
