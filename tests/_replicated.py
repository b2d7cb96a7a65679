"""A master and its replica (``replicaof``), each a server of its own on a loopback port."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from _servers import STARTUP_TIMEOUT, RedisServer, ServerStartError


class ReplicaServer(RedisServer):
    """A server started as the replica of ``master``."""

    def __init__(self, binary: Path, master: RedisServer) -> None:
        super().__init__(binary)
        self.master = master

    def _command(self) -> list[str]:
        return [*super()._command(), "--replicaof", self.master.host, str(self.master.port)]

    def wait_linked(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Poll until the replica says its link to the master is up."""
        deadline = time.monotonic() + timeout
        client = redis.Redis(host=self.host, port=self.port, decode_responses=True)
        try:
            while client.info("replication").get("master_link_status") != "up":
                if time.monotonic() >= deadline:
                    raise ServerStartError(f"{self!r} did not link to its master in time")
                time.sleep(0.02)
        finally:
            client.close()


class ReplicatedPair:
    """A master and one replica, linked; :meth:`close` stops both."""

    def __init__(self, binary: Path) -> None:
        self.master = RedisServer(binary)
        self.replica = ReplicaServer(binary, self.master)

    def __enter__(self) -> ReplicatedPair:
        try:
            self.master.start()
            self.replica.start()
            self.replica.wait_linked()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the replica (resumed first if paused), then the master."""
        if self.replica.is_paused():
            self.replica.resume()
        self.replica.close()
        self.master.close()
