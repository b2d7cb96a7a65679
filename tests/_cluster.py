"""A real Valkey cluster for the tests: three masters, three replicas, on loopback ports.

Each node is a :class:`~_servers.RedisServer` of its own (own temp directory, own free
port) started with ``cluster-enabled yes``; ``valkey-cli --cluster create`` then joins them
and hands out the slots. The cluster bus port of each node is a free port too
(``cluster-port``): the default, the client port plus 10000, may be past 65535 for an
ephemeral port. The tests never touch a server they did not start.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from _servers import STARTUP_TIMEOUT, RedisServer, ServerStartError, free_port

#: Masters and replicas: the smallest cluster where every master has a replica.
MASTERS = 3
REPLICAS_PER_MASTER = 1
NODES = MASTERS * (1 + REPLICAS_PER_MASTER)
#: How long ``--cluster create`` and the spread of its configuration may take.
FORM_TIMEOUT = 30.0
#: How long a master may be silent before the others take it as failed (milliseconds).
NODE_TIMEOUT_MS = 3000
#: A shorter one for the clusters the failover tests kill nodes of: a quick promotion.
FAILOVER_NODE_TIMEOUT_MS = 1000
#: How long a failover test waits for the replica of a killed master to take over.
PROMOTION_TIMEOUT = 30.0


def find_cli(server_binary: Path) -> Path | None:
    """The ``valkey-cli`` (or ``redis-cli``) beside ``server_binary``, if there is one."""
    for name in ("valkey-cli", "redis-cli"):
        candidate = server_binary.parent / name
        if candidate.is_file():
            return candidate
    return None


class ClusterNode(RedisServer):
    """One node of a cluster: a server with ``cluster-enabled yes`` and its own bus port."""

    def __init__(self, binary: Path, node_timeout_ms: int = NODE_TIMEOUT_MS) -> None:
        super().__init__(binary)
        self.bus_port = free_port()
        self.node_timeout_ms = node_timeout_ms

    def _command(self) -> list[str]:
        return [
            *super()._command(),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-port", str(self.bus_port),
            "--cluster-node-timeout", str(self.node_timeout_ms),
        ]  # fmt: skip


class ValkeyCluster:
    """Six cluster nodes joined into one cluster; :meth:`close` kills every one of them."""

    def __init__(self, binary: Path, cli: Path, node_timeout_ms: int = NODE_TIMEOUT_MS) -> None:
        self.binary = binary
        self.cli = cli
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[ClusterNode] = []

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every node as a seed: what the transport is given."""
        seeds = ",".join(f"{node.host}:{node.port}" for node in self.nodes)
        return f"redis+cluster://{seeds}"

    @property
    def seed_url(self) -> str:
        """``redis://`` of the first node: enough for redis-py's RedisCluster to find the rest."""
        return self.nodes[0].url

    def __repr__(self) -> str:
        return f"<ValkeyCluster {self.url}>"

    def start(self) -> ValkeyCluster:
        """Start the nodes, join them, and wait until every node says the cluster is ok."""
        try:
            for _ in range(NODES):
                node = ClusterNode(self.binary, self.node_timeout_ms)
                self.nodes.append(node)
                node.start()
            self._create()
            self._wait_formed(time.monotonic() + FORM_TIMEOUT)
        except BaseException:
            self.close()
            raise
        return self

    def _create(self) -> None:
        addresses = [f"{node.host}:{node.port}" for node in self.nodes]
        command = [
            str(self.cli), "--cluster", "create", *addresses,
            "--cluster-replicas", str(REPLICAS_PER_MASTER), "--cluster-yes",
        ]  # fmt: skip
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=FORM_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise ServerStartError(
                f"valkey-cli --cluster create failed ({result.returncode}):\n"
                f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}"
            )

    def _wait_formed(self, deadline: float) -> None:
        """Until each node knows all six, covers every slot, and says ``cluster_state:ok``."""
        while True:
            waiting = [
                f"{node.port}: {state}"
                for node in self.nodes
                if (state := self._state_of(node)) != "ok"
            ]
            if not waiting:
                return
            if time.monotonic() >= deadline:
                raise ServerStartError(f"the cluster did not form in time: {waiting}")
            time.sleep(0.05)

    @staticmethod
    def _state_of(node: ClusterNode) -> str:
        client = redis.Redis(
            host=node.host,
            port=node.port,
            socket_timeout=STARTUP_TIMEOUT,
            socket_connect_timeout=STARTUP_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        try:
            info = client.cluster("INFO")
            replication = client.info("replication")
            slots = client.execute_command("CLUSTER", "SLOTS")
        except redis.RedisError as exc:
            return f"no answer ({exc})"
        finally:
            client.close()
        if info.get("cluster_state") != "ok":
            return f"cluster_state:{info.get('cluster_state')}"
        if int(info.get("cluster_known_nodes", 0)) != NODES:
            return f"knows {info.get('cluster_known_nodes')} node(s)"
        if int(info.get("cluster_slots_ok", 0)) != 16384:
            return f"{info.get('cluster_slots_ok')} slot(s) ok"
        # Each range lists its master then its replicas: all six once each node sees the roles.
        listed = sum(len(entry) - 2 for entry in slots)
        if listed != NODES:
            return f"CLUSTER SLOTS lists {listed} node(s)"
        if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
            return "replica not yet linked to its master"
        return "ok"

    # -- failover --------------------------------------------------------------------------

    def master_of(self, key: str) -> ClusterNode:
        """The running node that is the master of ``key``'s slot, as the cluster says now."""
        client = client_for(self.url)
        try:
            name = client.get_node_from_key(key).name
        finally:
            client.close()
        return next(node for node in self.nodes if f"{node.host}:{node.port}" == name)

    def replica_of(self, master: ClusterNode) -> ClusterNode:
        """The replica of ``master`` (each master has one)."""
        for node in self.nodes:
            if node is not master and node.is_running():
                info = _replication_of(node)
                if info.get("role") == "slave" and int(info.get("master_port", 0)) == master.port:
                    return node
        raise AssertionError(f"no replica of {master!r}")

    def kill_master_of(self, key: str) -> tuple[ClusterNode, ClusterNode]:
        """SIGKILL the master of ``key``'s slot, as a crash would; its replica and it."""
        master = self.master_of(key)
        replica = self.replica_of(master)
        master.kill()
        return master, replica

    @staticmethod
    def is_master(node: ClusterNode) -> bool:
        """Whether ``node`` runs and says it is a master."""
        return node.is_running() and _replication_of(node).get("role") == "master"

    @staticmethod
    def wait_promoted(replica: ClusterNode, timeout: float = PROMOTION_TIMEOUT) -> float:
        """Poll until ``replica`` says it is a master; the monotonic time it first said so."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(redis.RedisError):
                if _replication_of(replica).get("role") == "master":
                    return time.monotonic()
            if time.monotonic() >= deadline:
                raise AssertionError(f"{replica!r} was not promoted within {timeout} s")
            time.sleep(0.02)

    def move_slot_of(self, key: str, target: ClusterNode) -> None:
        """Give the slot of ``key`` (which holds no key) to the master ``target``.

        As a resharding does, without keys to move: the target imports it, the source
        migrates it, then every master is told its new owner.
        """
        source = self.master_of(key)
        masters = [node for node in self.nodes if self.is_master(node)]
        with contextlib.ExitStack() as stack:
            clients = {
                node.port: stack.enter_context(redis.Redis(host=node.host, port=node.port))
                for node in masters
            }
            slot = int(clients[source.port].execute_command("CLUSTER", "KEYSLOT", key))
            ids = {
                port: client.execute_command("CLUSTER", "MYID").decode()
                for port, client in clients.items()
            }
            clients[target.port].execute_command(
                "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source.port]
            )
            clients[source.port].execute_command(
                "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target.port]
            )
            for port in (target.port, source.port, *clients):
                clients[port].execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target.port])

    def close(self) -> None:
        """Kill every node (even one that failed to start) and delete their directories."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.kill()
            with contextlib.suppress(Exception):
                node.close()
        self.nodes.clear()

    def __enter__(self) -> ValkeyCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _replication_of(node: ClusterNode) -> dict[str, object]:
    """``INFO replication`` of one node."""
    client = redis.Redis(
        host=node.host,
        port=node.port,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )
    try:
        return dict(client.info("replication"))
    finally:
        client.close()


def client_for(url: str) -> redis.Redis | redis.RedisCluster:
    """A redis-py client of the server or the cluster ``url`` names, for a test's own reads.

    For a ``redis+cluster://`` URL, its first node is the seed; the client finds the rest.
    """
    if url.startswith("redis+cluster://"):
        seed = url.split("://", 1)[1].split(",", 1)[0]
        host, _, port = seed.rpartition(":")
        return redis.RedisCluster(host=host, port=int(port))
    return redis.Redis.from_url(url)
