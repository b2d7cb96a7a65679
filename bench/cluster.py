"""What a cluster costs daebus and the servers: one node against clusters of 1, 3 and 6 masters.

    python bench/cluster.py             # about 3 minutes on 2 cores
    python bench/cluster.py --quick     # about 1 minute
    python bench/cluster.py --only rpc,fanout,durable,costs

Starts a private ``valkey-server`` and private clusters (``bench/_cluster.py``: N masters,
no replicas, all on this machine) and measures, for each:

- **rpc**: sequential calls of the bench's ``echo`` action (``def``) through a
  ``DaebusCaller``: p50, and CPU us per call of the caller (this process), of the service
  and of the servers (every node's ``used_cpu_user + used_cpu_sys``, summed), and the
  server commands per call, over ``redis://`` and ``redis+cluster://``; the connections
  and subscriptions the service and the caller hold on the servers (``INFO clients``,
  ``PUBSUB CHANNELS``, ``SHARDCHANNELS`` and ``NUMPAT``, before and after); then the
  commands per second they send while idle (15 s; 5 s with ``--quick``).
- **fanout** (also on 3 masters with a replica each): small messages published in turn
  to 3 channels, each with one listener, the channels spread over the shards. Classic: a
  bare redis-py ``RedisCluster.publish`` loop, and ``PUBLISH`` pipelined 1,000 at a time,
  to bare ``SUBSCRIBE`` listeners, each on its channel's shard's node (a classic PUBLISH
  is forwarded to every node over the cluster bus). Sharded: a bare
  ``RedisCluster.spublish`` loop, ``SPUBLISH`` pipelined, and a ``broadcast.send()``
  loop (daebus's cluster transport), to daebus listeners (``SSUBSCRIBE``). Published/s,
  the publisher's CPU us per message, and the servers' CPU us per message, every node
  summed, less what the nodes use idle over the same time.
- **durable**: 3 channels, spread over the shards, each with one durable listener
  service; ``broadcast.send_many(..., durable=True)`` in batches of 1,000 in turn to each;
  published/s, delivered/s in all (from the first send to the last acknowledgement), the
  CPU us per message of the producer (this process), of the consumers (summed) and of
  the servers, ``INFO commandstats``: calls per message and us per call of ``XADD``,
  ``XREADGROUP`` and ``XACK``, and the streams' ``MEMORY USAGE`` per entry.
- **costs** (one node, bare redis-py): the server memory of 1,000 idle connections, of
  10,000 channels subscribed (``SUBSCRIBE``; ``SSUBSCRIBE`` on a 1-master cluster) and
  of 10,000 patterns (``INFO memory``'s ``used_memory`` before and after); and the
  server CPU per pipelined ``PUBLISH`` (one subscriber) with 0, 100 and 1,000 patterns
  subscribed that do not match it: every publish is checked against every pattern.

CPU time per message is what to read: the machine's load moves rates and latencies far
more than CPU counters. All the nodes share this machine's cores, so a cluster's figures
are its CPU per message, not the throughput N machines would have. Not targets; never
timed assertions in tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis
from _common import ECHO_PAYLOAD, percentile
from _report import table

from _cluster import Cluster, name_on, run
from daebus import DaebusCaller, broadcast, protocol
from daebus.server import EmbeddedServer

SERVICES = Path(__file__).resolve().parent / "_services.py"
CHANNELS = 3
TTL = 900


@dataclass
class Topology:
    """A server or a cluster: its URL and a direct client of each node (master)."""

    name: str
    url: str
    nodes: list[redis.Redis]
    cluster: Cluster | None = None
    #: Every node, replicas included: what the CPU and command counts sum over.
    everyone: list[redis.Redis] = field(default_factory=list)
    idle_cpu_per_s: float = 0.0
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def client(self) -> redis.Redis | redis.RedisCluster:
        if self.cluster is None:
            return self.nodes[0]
        return redis.RedisCluster(host="127.0.0.1", port=self.cluster.nodes[0].port)

    def node_for(self, index: int) -> int:
        """The node the ``index``-th channel is placed on: round robin over the shards."""
        return index % len(self.nodes)

    def channel(self, index: int, prefix: str, key_prefix: str = "") -> str:
        """A channel (or a key suffix) on node ``node_for(index)``."""
        if self.cluster is None:
            return f"{prefix}-{index}"
        node = self.cluster.nodes[self.node_for(index)]
        return name_on(self.cluster, node, f"{prefix}{index}", key_prefix)

    def held(self) -> tuple[int, int]:
        """Client connections and subscriptions (channels, shard channels, patterns), summed."""
        connections = subscriptions = 0
        for node in self.everyone:
            connections += int(node.info("clients")["connected_clients"])
            for kind in ("CHANNELS", "SHARDCHANNELS"):
                subscriptions += len(run(node, "PUBSUB", kind))
            subscriptions += int(run(node, "PUBSUB", "NUMPAT"))
        return connections, subscriptions

    def commands(self) -> int:
        return sum(int(node.info("stats")["total_commands_processed"]) for node in self.everyone)

    def server_cpu(self) -> float:
        total = 0.0
        for node in self.everyone:
            info = node.info("cpu")
            total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        return total

    def spawn(self, *args: str) -> subprocess.Popen[bytes]:
        with tempfile.NamedTemporaryFile(
            prefix="daebus-bench-", suffix=".log", delete=False
        ) as log:
            process = subprocess.Popen(
                [sys.executable, str(SERVICES), *args, "--ttl", str(TTL)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
                start_new_session=True,
            )
        self.children.append(process)
        self.logs.append(Path(log.name))
        return process

    def stop_children(self) -> None:
        for process in self.children:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.children:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.children.clear()
        # What the children complained of, as run.py reports it; then their logs go.
        for path in self.logs:
            for line in path.read_text(errors="replace").splitlines():
                if "Traceback" in line or " ERROR " in line or " WARNING " in line:
                    print(f"  child log: {line}", flush=True)
            path.unlink(missing_ok=True)
        self.logs.clear()


@contextlib.contextmanager
def topology(masters: int, replicas: int = 0) -> Iterator[Topology]:
    """``masters`` = 0: one plain node (``redis://``); else a cluster of that many masters,
    with ``replicas`` replicas each."""
    if masters == 0:
        with EmbeddedServer() as server:
            client = redis.Redis.from_url(server.url)
            yield from _measured(Topology("1 node", server.url, [client], everyone=[client]))
        return
    with Cluster(masters, replicas) as cluster:
        clients = [redis.Redis(port=node.port) for node in cluster.nodes]
        others = [redis.Redis(port=node.port) for node in cluster.replicas]
        name = f"cluster {masters}" + (f"+{masters * replicas}r" if replicas else "")
        top = Topology(name, cluster.url, clients, cluster, everyone=clients + others)
        yield from _measured(top)


def _measured(top: Topology) -> Iterator[Topology]:
    before = top.server_cpu()
    time.sleep(1.0)
    top.idle_cpu_per_s = top.server_cpu() - before
    try:
        yield top
    finally:
        top.stop_children()
        for client in top.everyone:
            client.close()


def _until(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _subscribers(node: redis.Redis, channel: str, sharded: bool) -> int:
    command = "SHARDNUMSUB" if sharded else "NUMSUB"
    reply = run(node, "PUBSUB", command, channel)
    return int(reply[1])


# -- rpc -----------------------------------------------------------------------------
def rpc(top: Topology, calls: int, idle_seconds: float) -> dict[str, Any]:
    service = f"bench-cluster-{uuid.uuid4().hex[:6]}"
    held0 = top.held()
    child = top.spawn("daebus-service", "--url", top.url, "--name", service)
    with DaebusCaller(service, redis_url=top.url, timeout=10).connect() as caller:

        def ready() -> bool:
            if child.poll() is not None:
                raise RuntimeError(f"the service exited with {child.returncode}")
            try:
                caller.send_request("echo", ECHO_PAYLOAD, timeout=1)
                return True
            except Exception:
                return False

        _until(ready, "the echo service")
        held = top.held()
        for _ in range(min(200, calls)):
            caller.send_request("echo", ECHO_PAYLOAD)
        proc = psutil.Process(child.pid)
        cpu0, svc0, srv0 = time.process_time(), sum(proc.cpu_times()[:2]), top.server_cpu()
        commands0 = top.commands()
        samples = []
        for _ in range(calls):
            start = time.perf_counter()
            caller.send_request("echo", ECHO_PAYLOAD)
            samples.append((time.perf_counter() - start) * 1e6)
        took = sum(samples) / 1e6
        caller_cpu = time.process_time() - cpu0
        service_cpu = sum(proc.cpu_times()[:2]) - svc0
        server_cpu = top.server_cpu() - srv0 - top.idle_cpu_per_s * took
        # Less the INFO calls of the readings: a reading counts those made before it.
        commands = top.commands() - commands0 - 2 * len(top.everyone)
        # What the service and the connected caller send with nothing to do (renewals,
        # health checks), and what the servers spend on them.
        idle0, idle_cpu0 = top.commands(), top.server_cpu()
        time.sleep(idle_seconds)
        idle_commands = (top.commands() - idle0 - 2 * len(top.everyone)) / idle_seconds
        idle_cpu = (top.server_cpu() - idle_cpu0) / idle_seconds - top.idle_cpu_per_s
    samples.sort()
    return {
        "p50_us": percentile(samples, 0.50),
        "p99_us": percentile(samples, 0.99),
        "caller_us": caller_cpu / calls * 1e6,
        "service_us": service_cpu / calls * 1e6,
        "server_us": server_cpu / calls * 1e6,
        "commands": commands / calls,
        "idle_commands_per_s": idle_commands,
        "connections": held[0] - held0[0],
        "subscriptions": held[1] - held0[1],
        "idle_server_us_per_s": idle_cpu * 1e6,
    }


# -- fan-out -------------------------------------------------------------------------
def fanout(top: Topology, messages: int) -> list[dict[str, Any]]:
    channels = [top.channel(i, "bench-fan") for i in range(CHANNELS)]
    rows = []
    # Classic: bare SUBSCRIBE listeners, each on the node its channel hashes to.
    listeners = []
    for i, channel in enumerate(channels):
        node = top.nodes[top.node_for(i)]
        port = node.connection_pool.connection_kwargs["port"]
        url = f"redis://127.0.0.1:{port}/0"
        listeners.append(top.spawn("bare-listener", "--url", url, "--name", channel))
    for i, channel in enumerate(channels):
        node = top.nodes[top.node_for(i)]
        _until(lambda n=node, c=channel: _subscribers(n, c, False) >= 1, f"listener of {channel}")
    client = top.client()
    rows.append(_publish_loop(top, "PUBLISH (bare) -> bare", client.publish, channels, messages))
    rows.append(_pipelined(top, "PUBLISH pipelined -> bare", "PUBLISH", channels, 5 * messages))
    top.stop_children()  # each channel then has one listener, a daebus one
    if top.cluster is not None:
        # Sharded: daebus listeners, which SSUBSCRIBE on a cluster.
        for channel in channels:
            service = f"bench-fan-{uuid.uuid4().hex[:6]}"
            top.spawn("daebus-service", "--url", top.url, "--name", service, "--listen", channel)
        for i, channel in enumerate(channels):
            node = top.nodes[top.node_for(i)]
            _until(lambda n=node, c=channel: _subscribers(n, c, True) >= 1, f"SSUBSCRIBE {channel}")
        assert isinstance(client, redis.RedisCluster)
        spublish = client.spublish
        rows.append(_publish_loop(top, "SPUBLISH (bare) -> daebus", spublish, channels, messages))
        label = "SPUBLISH pipelined -> daebus"
        rows.append(_pipelined(top, label, "SPUBLISH", channels, 5 * messages))
    else:
        for channel in channels:
            service = f"bench-fan-{uuid.uuid4().hex[:6]}"
            top.spawn("daebus-service", "--url", top.url, "--name", service, "--listen", channel)
        for channel in channels:
            _until(lambda c=channel: _subscribers(top.nodes[0], c, False) >= 1, f"{channel}")
    os.environ[protocol_env()] = top.url

    def send(channel: str, data: str) -> Any:
        return broadcast.send(channel, json.loads(data))

    rows.append(_publish_loop(top, "broadcast.send -> daebus", send, channels, messages))
    client.close()
    return rows


def protocol_env() -> str:
    from daebus.config import ENV_REDIS_URL

    return ENV_REDIS_URL


def _publish_loop(
    top: Topology, label: str, publish: Any, channels: Sequence[str], messages: int
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    datas = [json.dumps({"run": tag, "seq": seq}) for seq in range(messages)]
    for seq in range(min(500, messages)):  # warm-up: connections to every node made
        publish(channels[seq % len(channels)], datas[seq])
    srv0, cpu0 = top.server_cpu(), time.process_time()
    start = time.perf_counter()
    for seq, data in enumerate(datas):
        publish(channels[seq % len(channels)], data)
    took = time.perf_counter() - start
    publisher = time.process_time() - cpu0
    time.sleep(0.5)  # the bus and the listeners' sockets drain
    server = top.server_cpu() - srv0 - top.idle_cpu_per_s * (time.perf_counter() - start)
    return {
        "label": label,
        "published_per_s": messages / took,
        "publisher_us": publisher / messages * 1e6,
        "server_us": server / messages * 1e6,
    }


def _pipelined(
    top: Topology, label: str, command: str, channels: Sequence[str], messages: int
) -> dict[str, Any]:
    """Like ``_publish_loop``, in pipelines of 1,000 sent to each channel's own node."""
    tag = uuid.uuid4().hex[:8]
    batch = 1000
    srv0, cpu0 = top.server_cpu(), time.process_time()
    start = time.perf_counter()
    for first in range(0, messages, batch):
        pipes = [node.pipeline(transaction=False) for node in top.nodes]
        for seq in range(first, min(messages, first + batch)):
            index = seq % len(channels)
            data = json.dumps({"run": tag, "seq": seq})
            run(pipes[top.node_for(index)], command, channels[index], data)
        for pipe in pipes:
            pipe.execute()
    took = time.perf_counter() - start
    publisher = time.process_time() - cpu0
    time.sleep(1.0)  # the bus and the listeners' sockets drain
    server = top.server_cpu() - srv0 - top.idle_cpu_per_s * (time.perf_counter() - start)
    return {
        "label": label,
        "published_per_s": messages / took,
        "publisher_us": publisher / messages * 1e6,
        "server_us": server / messages * 1e6,
    }


# -- durable -------------------------------------------------------------------------
def durable(top: Topology, messages: int) -> dict[str, Any]:
    prefix = protocol.stream_key("")
    channels = [top.channel(i, "bench-dur", prefix) for i in range(CHANNELS)]
    groups = []
    consumers = []
    for channel in channels:
        group = f"bench-dur-{uuid.uuid4().hex[:6]}"
        groups.append(group)
        child = top.spawn("daebus-service", "--url", top.url, "--name", group, "--durable", channel)
        consumers.append(psutil.Process(child.pid))
    client = top.client()

    def group_info(channel: str, group: str) -> dict[str, Any] | None:
        try:
            found = client.xinfo_groups(protocol.stream_key(channel))
        except redis.ResponseError:
            return None
        for entry in found:
            name = entry["name"]
            if (name.decode() if isinstance(name, bytes) else name) == group:
                return dict(entry)
        return None

    for channel, group in zip(channels, groups, strict=True):
        _until(lambda c=channel, g=group: group_info(c, g) is not None, f"group {group}")
    os.environ[protocol_env()] = top.url
    for node in top.nodes:
        node.config_resetstat()
    tag = uuid.uuid4().hex[:8]

    def consumers_cpu() -> float:
        return sum(sum(process.cpu_times()[:2]) for process in consumers)

    srv0, producer0, consumers0 = top.server_cpu(), time.process_time(), consumers_cpu()
    start = time.perf_counter()
    batch = 1000
    for first in range(0, messages, batch):
        for channel in channels:
            pairs = [(channel, {"run": tag, "seq": s}) for s in range(first, first + batch)]
            broadcast.send_many(pairs, durable=True, maxlen=2 * messages)
    producer = time.process_time() - producer0
    sent = time.perf_counter() - start

    def delivered(channel: str, group: str) -> bool:
        info = group_info(channel, group) or {}
        return int(info.get("entries-read") or 0) >= messages and not info.get("pending")

    for channel, group in zip(channels, groups, strict=True):
        _until(lambda c=channel, g=group: delivered(c, g), f"{group} to catch up", 120)
    took = time.perf_counter() - start
    server = top.server_cpu() - srv0 - top.idle_cpu_per_s * took
    consumer = consumers_cpu() - consumers0
    total = messages * len(channels)
    stats: dict[str, list[float]] = {}
    for node in top.nodes:
        for name, values in node.info("commandstats").items():
            calls, usec = stats.setdefault(name.removeprefix("cmdstat_"), [0.0, 0.0])
            stats[name.removeprefix("cmdstat_")] = [
                calls + values["calls"],
                usec + values["usec"],
            ]
    stream_bytes = sum(
        int(client.memory_usage(protocol.stream_key(channel), samples=0) or 0)
        for channel in channels
    )
    client.close()
    top.stop_children()

    def command(name: str) -> tuple[float, float]:
        calls, usec = stats.get(name, [0.0, 0.0])
        return calls / total, usec / calls if calls else 0.0

    return {
        "published_per_s": total / sent,
        "delivered_per_s": total / took,
        "producer_us": producer / total * 1e6,
        "consumer_us": consumer / total * 1e6,
        "server_us": server / total * 1e6,
        "stream_bytes_per_entry": stream_bytes / total,
        "commands": {name: command(name) for name in ("xadd", "xreadgroup", "xack")},
    }


# -- costs on one node ---------------------------------------------------------------
def costs(quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    count = 10_000
    with EmbeddedServer() as server:
        client = redis.Redis.from_url(server.url)
        for kind, command in (("channels", "SUBSCRIBE"), ("patterns", "PSUBSCRIBE")):
            out[kind] = _memory_of(client, command, count, "bench:mem:{}:x")
        out["connection"] = _connection_memory(client, 1000)
        out["publish_us"] = {}
        listener = client.pubsub()
        listener.subscribe("bench:target")
        listener.get_message(timeout=1)
        patterns = client.pubsub()
        held = 0
        for wanted in (0, 100, 1000):
            if wanted > held:
                patterns.psubscribe(*(f"bench:p{i}:*" for i in range(held, wanted)))
                held = wanted
                _until(lambda n=held: run(client, "PUBSUB", "NUMPAT") >= n, "patterns")
            out["publish_us"][wanted] = _publish_cost(client, 20_000 if quick else 50_000)
            listener.reset()
            listener = client.pubsub()
            listener.subscribe("bench:target")
            listener.get_message(timeout=1)
        listener.close()
        patterns.close()
        client.close()
    with Cluster(1) as cluster:
        node = redis.Redis(port=cluster.nodes[0].port)
        out["shard_channels"] = _memory_of(node, "SSUBSCRIBE", count, "bench:mem:{}:x")
        node.close()
    return out


def _memory_of(client: redis.Redis, command: str, count: int, form: str) -> float:
    """Bytes of server memory per channel (or pattern) one connection subscribes to."""
    counter = {"SUBSCRIBE": "NUMSUB", "PSUBSCRIBE": "NUMPAT", "SSUBSCRIBE": "SHARDCHANNELS"}
    before = int(client.info("memory")["used_memory"])
    pubsub = client.pubsub()
    try:
        if command == "SSUBSCRIBE":  # one slot per command: a channel at a time
            for i in range(count):
                run(pubsub, command, form.format(i))
        else:
            for first in range(0, count, 1000):
                names = [form.format(i) for i in range(first, min(count, first + 1000))]
                run(pubsub, command, *names)

        def subscribed() -> bool:
            if command == "SUBSCRIBE":
                last = form.format(count - 1)
                return int(run(client, "PUBSUB", "NUMSUB", last)[1]) >= 1
            reply = run(client, "PUBSUB", counter[command])
            return (int(reply) if command == "PSUBSCRIBE" else len(reply)) >= count

        _until(subscribed, f"{command} x{count}")
        after = int(client.info("memory")["used_memory"])
    finally:
        pubsub.close()
    return (after - before) / count


def _connection_memory(client: redis.Redis, count: int) -> float:
    """Bytes of server memory per idle client connection (each has sent one PING)."""
    before = int(client.info("memory")["used_memory"])
    port = client.connection_pool.connection_kwargs["port"]
    sockets = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"PING\r\n")
            sockets.append(sock)
        for sock in sockets:
            sock.recv(16)
        after = int(client.info("memory")["used_memory"])
    finally:
        for sock in sockets:
            sock.close()
    return (after - before) / count


def _publish_cost(client: redis.Redis, messages: int) -> float:
    """Server CPU us per PUBLISH to a channel of one subscriber, pipelined 1,000 at a time."""

    def server_cpu() -> float:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    before = server_cpu()
    for _ in range(0, messages, 1000):
        pipe = client.pipeline(transaction=False)
        for _ in range(1000):
            pipe.publish("bench:target", b"x" * 20)
        pipe.execute()
    return (server_cpu() - before) / messages * 1e6


# -- main ----------------------------------------------------------------------------
def _f(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="about a minute")
    parser.add_argument("--only", default="rpc,fanout,durable,costs")
    parser.add_argument("--json", help="also write every figure to this file")
    args = parser.parse_args()
    only = set(args.only.split(","))
    calls = 1000 if args.quick else 4000
    fan_messages = 5000 if args.quick else 20000
    durable_messages = 5000 if args.quick else 20000
    shapes = [0, 1, 3, 6]
    results: dict[str, Any] = {"rpc": {}, "fanout": {}, "durable": {}}
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} cores")
    for masters in shapes if only & {"rpc", "fanout", "durable"} else []:
        with topology(masters) as top:
            print(f"{top.name}: idle servers {top.idle_cpu_per_s * 1e3:.1f} ms CPU/s", flush=True)
            if "rpc" in only:
                results["rpc"][top.name] = rpc(top, calls, 5.0 if args.quick else 15.0)
                top.stop_children()
            if "fanout" in only:
                results["fanout"][top.name] = fanout(top, fan_messages)
                top.stop_children()
            if "durable" in only and masters in (0, 3):
                results["durable"][top.name] = durable(top, durable_messages)
    if "fanout" in only:
        # Replicas: every node gets a classic publish, a shard's replicas its sharded ones.
        with topology(3, 1) as top:
            print(f"{top.name}: idle servers {top.idle_cpu_per_s * 1e3:.1f} ms CPU/s", flush=True)
            results["fanout"][top.name] = fanout(top, fan_messages)
    if "costs" in only:
        results["costs"] = costs(args.quick)
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


def report(results: dict[str, Any]) -> None:
    rpc_rows = results["rpc"]
    if rpc_rows:
        base = rpc_rows["1 node"]
        print("\nRPC, sequential calls of a def echo action (CPU us per call)")
        rows = [
            [
                name,
                _f(r["p50_us"]),
                f"{r['p50_us'] / base['p50_us']:.2f}x",
                _f(r["p99_us"]),
                _f(r["caller_us"], 1),
                _f(r["service_us"], 1),
                _f(r["server_us"], 1),
                f"{r['server_us'] / base['server_us']:.2f}x",
                f"{r['commands']:.2f}",
                f"{r['idle_commands_per_s']:.2f}",
                f"{r['connections']} / {r['subscriptions']}",
            ]
            for name, r in rpc_rows.items()
        ]
        headers = [
            "servers",
            "p50 us",
            "vs node",
            "p99 us",
            "caller",
            "service",
            "server",
            "vs node",
            "commands",
            "idle cmd/s",
            "connections / subs",
        ]
        print(table(headers, rows))
    if results["fanout"]:
        print(f"\nFan-out to {CHANNELS} channels spread over the shards, 1 listener each")
        rows = []
        base = results["fanout"]["1 node"][0]["server_us"]
        for name, variants in results["fanout"].items():
            for r in variants:
                rows.append(
                    [
                        name,
                        r["label"],
                        _f(r["published_per_s"]),
                        _f(r["publisher_us"], 1),
                        _f(r["server_us"], 1),
                        f"{r['server_us'] / base:.2f}x",
                    ]
                )
        headers = ["servers", "variant", "published/s", "publisher us", "servers us", "vs node"]
        print(table(headers, rows))
    if results["durable"]:
        print(
            f"\nDurable fan-out, {CHANNELS} channels spread over the shards, 1 service each"
            " (CPU us per message; commands: calls per message / us per call)"
        )
        rows = []
        for name, r in results["durable"].items():
            c = r["commands"]
            rows.append(
                [
                    name,
                    _f(r["published_per_s"]),
                    _f(r["delivered_per_s"]),
                    _f(r["producer_us"], 1),
                    _f(r["consumer_us"], 1),
                    _f(r["server_us"], 1),
                    *(f"{c[k][0]:.3f} / {c[k][1]:.1f}" for k in ("xadd", "xreadgroup", "xack")),
                    _f(r["stream_bytes_per_entry"]),
                ]
            )
        headers = ["servers", "published/s", "delivered/s", "producer", "consumers", "servers",
                   "XADD calls/msg / us",
                   "XREADGROUP", "XACK", "bytes/entry"]  # fmt: skip
        print(table(headers, rows))
    if "costs" in results:
        c = results["costs"]
        print("\nOne node: memory per subscription, CPU per PUBLISH with patterns")
        rows = [
            ["idle connection, bytes", _f(c["connection"])],
            ["SUBSCRIBE, bytes per channel", _f(c["channels"])],
            ["SSUBSCRIBE (1-master cluster), bytes per channel", _f(c["shard_channels"])],
            ["PSUBSCRIBE, bytes per pattern", _f(c["patterns"])],
            *([f"PUBLISH us, {n} patterns", _f(v, 2)] for n, v in c["publish_us"].items()),
        ]
        print(table(["figure", "value"], rows))


if __name__ == "__main__":
    raise SystemExit(main())
