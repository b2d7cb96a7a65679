"""Load sharing: 1, 2 and 4 instances of one service whose handlers each take 5 ms.

Every instance is a separate process running the same service (``daebus-worker`` in
``_services.py``: ``Daebus(..., max_workers=1)``, handlers that sleep 5 ms), so one
instance does at most about 200 a second, and N instances should do N times as many.
Each instance count gets a fresh service (and durable channel) in each round, with
exactly that many instances; counts take turns, 1 2 4 then 4 2 1.

Modes, each a function of (bench, the service's instances) in :data:`MODES`:

- **pubsub**: ``sharing_callers`` threads sharing one ``DaebusCaller`` call the action
  ``work`` for ``sharing_seconds`` after a warm-up; calls/s. The reply names the
  instance that ran it, which gives each instance's share.
- **durable**: ``sharing_messages x N`` messages sent at once with
  ``broadcast.send_many(..., durable=True)`` to the service's durable listener (one
  group, its instances sharing the messages); handled/s, from the start of sending to
  the last message handled by any instance. Each instance's share comes from its tally
  (asked for on a plain channel every instance listens to).

The ratio of each row is its rate over N times one instance's rate in the same run:
the bare comparison here is one instance itself.
"""

from __future__ import annotations

import collections
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import redis
from _common import WORK_SECONDS, Meter, add_usage, pubsub_of
from _fanout import drain
from _procs import Child
from _rpc import thread_throughput
from _setup import Bench

from daebus import DaebusCaller, broadcast


@dataclass
class Instances:
    """N instances of one service, started for one measurement."""

    bench: Bench
    count: int
    service: str
    durable: str  # the durable listener's channel
    reports: str  # the plain channel on which every instance answers for its tally
    children: list[Child] = field(default_factory=list)
    meter: Meter | None = None  # CPU of the instances, of the bench, of the server

    def query(self, run: str, timeout: float) -> list[dict[str, Any]] | None:
        """Every instance's tally of ``run``, or None if one did not answer in time."""
        client = redis.Redis.from_url(self.bench.url)
        pubsub = pubsub_of(client, ignore_subscribe_messages=True)
        reply_to = f"{self.reports}-{uuid.uuid4().hex[:8]}"
        try:
            pubsub.subscribe(reply_to)
            self.bench.procs.wait_subscribed(reply_to)
            client.publish(self.reports, json.dumps({"report": run, "reply_to": reply_to}))
            by_pid: dict[int, dict[str, Any]] = {}
            deadline = time.monotonic() + timeout
            while len(by_pid) < self.count and time.monotonic() < deadline:
                message = pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
                if message is not None and message["type"] == "message":
                    report = json.loads(message["data"])
                    by_pid[report["pid"]] = report
        finally:
            pubsub.close()
            client.close()
        return list(by_pid.values()) if len(by_pid) == self.count else None


def _start(bench: Bench, count: int, label: str) -> Instances:
    service = bench.name(f"share{count}-{label}")
    instances = Instances(bench, count, service, f"{service}-durable", f"{service}-reports")
    for _ in range(count):
        instances.children.append(
            bench.procs.spawn(
                "daebus-worker",
                *("--name", service, "--durable", instances.durable),
                *("--reports", instances.reports),
            )
        )
    procs = bench.procs
    procs.wait_subscribed(service, count, timeout=60.0, watch=instances.children)
    procs.wait_subscribed(instances.reports, count, timeout=60.0, watch=instances.children)
    instances.meter = Meter(
        bench.url, {f"instance{i}": child.pid for i, child in enumerate(instances.children)}
    )
    return instances


def pubsub_mode(bench: Bench, instances: Instances, durable: bool = False) -> dict[str, Any]:
    """Concurrent calls from threads sharing one caller; each call names its instance.

    ``durable``: the calls are durable requests, through the service's request stream.
    """
    cfg = bench.config
    by_pid: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()
    with DaebusCaller(instances.service, redis_url=bench.url, timeout=cfg.call_timeout) as caller:
        caller.connect()

        def call() -> None:
            pid = caller.send_request("work", durable=durable)
            with lock:
                by_pid[pid] += 1

        callers, max_calls = cfg.sharing_callers, 1_000_000
        thread_throughput(call, callers, cfg.sharing_seconds / 4, max_calls)  # warm-up
        by_pid.clear()
        before = instances.meter.snapshot() if instances.meter else {}
        result = thread_throughput(call, callers, cfg.sharing_seconds, max_calls)
        usage = instances.meter.since(before) if instances.meter else {}
    return {
        "usage": usage,
        "done": result["calls"],
        "seconds": result["seconds"],
        "shares": sorted(by_pid.values(), reverse=True),
        "errors": result["errors"][:5],
    }


def durable_mode(bench: Bench, instances: Instances) -> dict[str, Any]:
    """A burst of durable messages shared by the instances of one group."""
    cfg = bench.config
    count = cfg.sharing_messages * instances.count
    # A warm-up run: connections, and every instance's group consumer reading.
    _send_durable(bench, instances, uuid.uuid4().hex, 4 * instances.count)
    run = uuid.uuid4().hex
    before = instances.meter.snapshot() if instances.meter else {}
    began = _send_durable(bench, instances, run, count)
    # At one message per 5 ms on a lone instance, the slowest case, and then some.
    deadline = max(bench.config.drain_deadline, 3 * count * WORK_SECONDS)
    total = _Total(instances)
    drain(total, run, count, bench, deadline)
    usage = instances.meter.since(before) if instances.meter else {}
    reports = total.reports
    received = sum(report["count"] for report in reports)
    lasts = [report["last"] for report in reports if report.get("last") is not None]
    return {
        "done": received,
        "seconds": (max(lasts) - began) if lasts else 0.0,
        "shares": sorted((report["count"] for report in reports), reverse=True),
        "lost": max(0, count - received),
        "errors": [],
        "usage": usage,
    }


class _Total:
    """The instances' tallies as one: drain waits for their sum, not each one's."""

    def __init__(self, instances: Instances) -> None:
        self.instances = instances
        self.reports: list[dict[str, Any]] = []  # each instance's, as last answered

    def query(self, run: str, timeout: float) -> list[dict[str, Any]] | None:
        reports = self.instances.query(run, timeout)
        if reports is None:
            return None
        self.reports = reports
        total = sum(report["count"] for report in reports)
        # drain compares every count with the whole: give it the sum.
        return [{"count": total, "out_of_order": 0, "last": None}]


def _send_durable(bench: Bench, instances: Instances, run: str, count: int) -> float:
    batch = bench.config.durable_batch
    broadcast.send(bench.name("warm-up"), {}, durable=True, maxlen=1)  # connects
    began = time.monotonic()
    for start in range(0, count, batch):
        end = min(count, start + batch)
        messages = [(instances.durable, {"run": run, "seq": seq}) for seq in range(start, end)]
        broadcast.send_many(messages, durable=True)
    return began


#: mode -> (label, the function measuring it). A new mode is one more entry.
MODES: dict[str, tuple[str, Callable[[Bench, Instances], dict[str, Any]]]] = {
    "pubsub": ("pub/sub requests, threads sharing a DaebusCaller", pubsub_mode),
    "durable": ("durable listener, send_many(durable=True) burst", durable_mode),
    "durable_request": (
        "durable requests, threads sharing a DaebusCaller",
        partial(pubsub_mode, durable=True),
    ),
}


def sharing(bench: Bench) -> dict[str, Any]:
    cfg = bench.config
    counts = cfg.sharing_instances
    totals: dict[tuple[str, int], dict[str, Any]] = {}
    for index in range(cfg.sharing_rounds):
        for count in counts if index % 2 == 0 else counts[::-1]:
            instances = _start(bench, count, f"r{index}")
            try:
                time.sleep(1.0)  # every instance knows of the others, and reads
                for mode, (_, measure) in MODES.items():
                    result = measure(bench, instances)
                    total = totals.setdefault(
                        (mode, count),
                        {
                            "done": 0,
                            "seconds": 0.0,
                            "shares": [],
                            "lost": 0,
                            "errors": [],
                            "usage": {},
                        },
                    )
                    add_usage(total["usage"], result.get("usage", {}))
                    total["done"] += result["done"]
                    total["seconds"] += result["seconds"]
                    total["shares"].append(result["shares"])
                    total["lost"] += result.get("lost", 0)
                    total["errors"] += result["errors"]
            finally:
                with contextlib.suppress(Exception):
                    if instances.meter is not None:
                        instances.meter.close()
                    bench.procs.stop(*instances.children)
                    _delete_stream(bench, instances.durable)
    rows = []
    for mode, (label, _) in MODES.items():
        one = totals[mode, counts[0]]
        one_rate = one["done"] / one["seconds"] if one["seconds"] else 0.0
        for count in counts:
            total = totals[mode, count]
            rate = total["done"] / total["seconds"] if total["seconds"] else 0.0
            ideal = one_rate * count / counts[0]
            usage, done = total["usage"], max(1, total["done"])
            rows.append(
                {
                    "mode": mode,
                    "label": label,
                    "instances": count,
                    "done": total["done"],
                    "per_s": rate,
                    "ideal_per_s": ideal,
                    "ratio": rate / ideal if ideal else None,
                    "shares": total["shares"],
                    "lost": total["lost"],
                    "errors": total["errors"],
                    # CPU us per call or message: of all the instances together, of the
                    # bench (the caller or the sender), of the server.
                    "instances_cpu_us": 1e6
                    * sum(v for k, v in usage.items() if k.startswith("instance"))
                    / done,
                    "bench_cpu_us": 1e6 * usage.get("bench", 0.0) / done,
                    "server_cpu_us": 1e6 * usage.get("server", 0.0) / done,
                }
            )
    return {"rows": rows, "work_ms": WORK_SECONDS * 1000, "callers": cfg.sharing_callers}


def _delete_stream(bench: Bench, channel: str) -> None:
    from daebus import protocol

    client = redis.Redis.from_url(bench.url)
    try:
        client.delete(protocol.stream_key(channel))
    finally:
        client.close()
