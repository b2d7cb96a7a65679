"""A real Sentinel set-up for the tests: a master, its replica and three sentinels.

Every process is a :class:`~_servers.RedisServer` of its own (own temp directory, own
free loopback port). The sentinels run ``valkey-server sentinel.conf --sentinel`` with a
short failure detection, so that a test which kills the master sees its replica promoted
within a few seconds. The tests never touch a server they did not start.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from _servers import RedisServer, ServerStartError

#: The name the sentinels know the master by: the path of the ``redis+sentinel://`` URL.
MASTER_NAME = "daebus-test"
SENTINELS = 3
QUORUM = 2
#: How long a master may be silent before a sentinel thinks it down.
DOWN_AFTER_MS = 1000
#: How long a failover may take before another sentinel tries again.
FAILOVER_TIMEOUT_MS = 5000
#: How long the sentinels get to find the replica and each other.
FORM_TIMEOUT = 30.0


class ReplicaServer(RedisServer):
    """A data node that replicates ``master`` from its first start on."""

    def __init__(self, binary: Path, master: RedisServer) -> None:
        super().__init__(binary)
        self.master = master

    def _command(self) -> list[str]:
        return [*super()._command(), "--replicaof", self.master.host, str(self.master.port)]


class SentinelServer(RedisServer):
    """A sentinel watching ``master``, its configuration file in its own directory."""

    def __init__(self, binary: Path, master: RedisServer) -> None:
        super().__init__(binary)
        self.master = master

    def _command(self) -> list[str]:
        # The sentinel rewrites this file as it learns (replicas, peers, epochs).
        config = self._dir / "sentinel.conf"
        config.write_text(
            f"sentinel monitor {MASTER_NAME} {self.master.host} {self.master.port} {QUORUM}\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        return [
            str(self.binary), str(config), "--sentinel",
            "--port", str(self.port), "--bind", self.host,
            "--dir", str(self._dir), "--daemonize", "no",
        ]  # fmt: skip


class SentinelSet:
    """A master, a replica and three sentinels; :meth:`close` kills every one of them."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary
        self.master = RedisServer(binary)
        self.replica: ReplicaServer | None = None
        self.sentinels: list[SentinelServer] = []

    @property
    def url(self) -> str:
        """``redis+sentinel://`` with every sentinel: what the transport is given."""
        hosts = ",".join(f"{sentinel.host}:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}"

    def __repr__(self) -> str:
        return f"<SentinelSet {self.url}>"

    def start(self) -> SentinelSet:
        """Start every process and wait until each sentinel knows the replica and its peers."""
        try:
            self.master.start()
            self.replica = ReplicaServer(self.binary, self.master)
            self.replica.start()
            for _ in range(SENTINELS):
                sentinel = SentinelServer(self.binary, self.master)
                self.sentinels.append(sentinel)
                sentinel.start()
            self._wait_formed(time.monotonic() + FORM_TIMEOUT)
        except BaseException:
            self.close()
            raise
        return self

    def master_address(self, sentinel: SentinelServer | None = None) -> tuple[str, int] | None:
        """Where ``sentinel`` (by default the first that answers) says the master is."""
        for candidate in [sentinel] if sentinel else self.sentinels:
            client = _client(candidate.host, candidate.port)
            try:
                reply = client.execute_command("SENTINEL", "get-master-addr-by-name", MASTER_NAME)
            except redis.RedisError:
                continue
            finally:
                client.close()
            if reply:
                return str(reply[0]), int(reply[1])
        return None

    def wait_promoted(self, old: tuple[str, int], timeout: float) -> tuple[tuple[str, int], float]:
        """Wait until a sentinel names a master other than ``old``: the promotion.

        Returns the new master's address and the monotonic time the first sentinel
        named it (a poll every 20 ms, so at most that late).
        """
        deadline = time.monotonic() + timeout
        while True:
            for sentinel in self.sentinels:
                address = self.master_address(sentinel)
                if address is not None and address != old:
                    return address, time.monotonic()
            if time.monotonic() >= deadline:
                raise TimeoutError("the sentinels did not promote the replica in time")
            time.sleep(0.02)

    def _wait_formed(self, deadline: float) -> None:
        while True:
            waiting = [
                f"{sentinel.port}: {state}"
                for sentinel in self.sentinels
                if (state := self._state_of(sentinel)) != "ok"
            ]
            if not waiting:
                return
            if time.monotonic() >= deadline:
                raise ServerStartError(f"the sentinels did not settle in time: {waiting}")
            time.sleep(0.05)

    def _state_of(self, sentinel: SentinelServer) -> str:
        client = _client(sentinel.host, sentinel.port)
        try:
            state = client.sentinel_master(MASTER_NAME)  # redis-py parses it into a dict
        except redis.RedisError as exc:
            return f"no answer ({exc})"
        finally:
            client.close()
        if int(state.get("num-slaves", 0)) < 1:
            return "knows no replica yet"
        if int(state.get("num-other-sentinels", 0)) < SENTINELS - 1:
            return f"knows {state.get('num-other-sentinels')} other sentinel(s)"
        if state.get("is_sdown") or state.get("is_odown"):
            return "thinks the master down"
        return "ok"

    def close(self) -> None:
        """Kill every process (even one that failed to start) and delete their directories."""
        servers: list[RedisServer] = [*self.sentinels, self.master]
        if self.replica is not None:
            servers.append(self.replica)
        for server in servers:
            with contextlib.suppress(Exception):
                server.kill()
            with contextlib.suppress(Exception):
                server.close()
        self.sentinels.clear()

    def __enter__(self) -> SentinelSet:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _client(host: str, port: int) -> redis.Redis:
    return redis.Redis(
        host=host,
        port=port,
        socket_timeout=2.0,
        socket_connect_timeout=2.0,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )
