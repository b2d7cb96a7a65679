"""Broadcast fan-out of small messages to 1 and 4 listener processes.

Each message is ``{"run": id, "seq": n}``; every listener counts the messages of each run,
counts those out of order, and notes when the last one arrived. After publishing, the
bench asks every listener for its tally (daebus: a ``report`` action; bare: a report
request on the broadcast channel itself, so it is answered after everything published
before it) until every count has reached what was published, or the counts have not
grown for ``drain_stall`` seconds, or ``drain_deadline`` has passed. What is missing
then is lost.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import redis
from _common import Meter, pubsub_of
from _procs import Child
from _setup import Bench

from daebus import CallTimeoutError, DaebusCaller, broadcast

#: variant -> (label, which listeners, comparable bare variant)
VARIANTS: dict[str, tuple[str, str, str]] = {
    "bare": ("bare PUBLISH loop -> bare subscribers", "bare", "bare"),
    "daebus_send": ("broadcast.send() loop, plain script -> async listeners", "daebus", "bare"),
    "daebus_send_message": (
        "DaebusCaller.send_message() loop -> async listeners",
        "daebus",
        "bare",
    ),
    "bare_to_daebus": ("bare PUBLISH loop -> async listeners (cross-check)", "daebus", "bare"),
    "bare_pipeline": ("bare pipelined PUBLISH, 1000/batch -> bare subscribers", "bare", ""),
    "daebus_send_many": (
        "broadcast.send_many(), 1000/batch -> async listeners",
        "daebus",
        "bare_pipeline",
    ),
    "daebus_send_def_listener": (
        "broadcast.send() loop -> def listener (thread pool)",
        "daebus_def",
        "bare",
    ),
}
BATCHED = {"bare_pipeline", "daebus_send_many"}
PRIMARY = "daebus_send"
PRIMARY_BATCH = "daebus_send_many"


class Tallies(Protocol):
    """Listeners that can be asked for their tallies of a run."""

    def query(self, run: str, timeout: float) -> list[dict[str, Any]] | None:
        """Every listener's tally of ``run``, or None if one did not answer in time."""


class _Listeners:
    """One set of listener processes on one channel, and how to ask them for tallies."""

    def __init__(self, bench: Bench, kind: str, count: int) -> None:
        self.bench = bench
        self.kind = kind
        self.channel = bench.name(f"fan{count}-{kind}")
        self.children: list[Child] = []
        self.callers: list[DaebusCaller] = []
        self._client = redis.Redis.from_url(bench.url)
        self._pubsub: Any = None
        procs = bench.procs
        for index in range(count):
            if kind == "bare":
                self.children.append(procs.spawn("bare-listener", "--name", self.channel))
            else:
                service = bench.name(f"fan{count}-{kind}-{index}")
                args = ["--name", service, "--listen", self.channel]
                if kind == "daebus_def":
                    args.append("--sync-listener")
                self.children.append(procs.spawn("daebus-service", *args))
                self.callers.append(
                    DaebusCaller(service, redis_url=bench.url, timeout=bench.config.call_timeout)
                )
        procs.wait_subscribed(self.channel, count, watch=self.children)
        for caller in self.callers:
            procs.wait_subscribed(caller.target_service, watch=self.children)
            caller.connect()
        self.meter = Meter(bench.url, {f"l{i}": c.pid for i, c in enumerate(self.children)})
        if kind == "bare":
            self._reports = bench.name(f"fan{count}-reports-{uuid.uuid4().hex[:6]}")
            self._pubsub = pubsub_of(self._client, ignore_subscribe_messages=True)
            self._pubsub.subscribe(self._reports)
            procs.wait_subscribed(self._reports)

    def query(self, run: str, timeout: float) -> list[dict[str, Any]] | None:
        """Every listener's tally of ``run``, or None if one did not answer in time."""
        if self.kind != "bare":
            try:
                return [
                    caller.send_request("report", {"run": run}, timeout=timeout)
                    for caller in self.callers
                ]
            except CallTimeoutError:
                return None
        request = {"report": run, "reply_to": self._reports}
        self._client.publish(self.channel, json.dumps(request))
        return collect_reports(self._pubsub, len(self.children), timeout)

    def close(self) -> None:
        self.meter.close()
        for caller in self.callers:
            caller.close()
        if self._pubsub is not None:
            self._pubsub.close()
        self._client.close()
        self.bench.procs.stop(*self.children)


def collect_reports(pubsub: Any, count: int, timeout: float) -> list[dict[str, Any]] | None:
    """The reports of ``count`` children on ``pubsub`` (one per pid), or None if late."""
    by_pid: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(by_pid) < count and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
        if message is not None and message["type"] == "message":
            report = json.loads(message["data"])
            by_pid[report["pid"]] = report
    return list(by_pid.values()) if len(by_pid) == count else None


def drain(
    listeners: Tallies, run: str, expected: int, bench: Bench, deadline_s: float | None = None
) -> list[dict[str, Any]]:
    """Poll the tallies until complete, stalled or out of time (see the module doc).

    ``deadline_s``: the longest wait, if not the configured ``drain_deadline``.
    """
    cfg = bench.config
    deadline = time.monotonic() + (cfg.drain_deadline if deadline_s is None else deadline_s)
    reports: list[dict[str, Any]] = []
    last_counts: list[int] | None = None
    last_change = time.monotonic()
    while True:
        now = time.monotonic()
        answer = listeners.query(run, timeout=max(0.5, min(10.0, deadline - now)))
        now = time.monotonic()
        if answer is None:
            last_change = now  # a listener too busy to answer is still catching up
        else:
            reports = answer
            counts = [report["count"] for report in reports]
            if all(count >= expected for count in counts):
                return reports
            if counts != last_counts:
                last_counts, last_change = counts, now
            elif now - last_change >= cfg.drain_stall:
                return reports
        if now >= deadline:
            return reports
        time.sleep(0.1)


def _publisher(variant: str, bench: Bench, channel: str) -> Callable[[str, int], float]:
    """A function publishing messages 0..n-1 of a run as ``variant`` does.

    It returns when publishing began (``time.monotonic()``), after any connecting.
    """
    cfg = bench.config
    size = cfg.fanout_batch_size

    def bare(run: str, count: int) -> float:
        client = redis.Redis.from_url(bench.url)
        client.ping()
        publish, dumps = client.publish, json.dumps
        began = time.monotonic()
        for seq in range(count):
            publish(channel, dumps({"run": run, "seq": seq}))
        client.close()
        return began

    def bare_pipeline(run: str, count: int) -> float:
        client = redis.Redis.from_url(bench.url)
        client.ping()
        dumps = json.dumps
        began = time.monotonic()
        for start in range(0, count, size):
            pipe = client.pipeline(transaction=False)
            for seq in range(start, min(count, start + size)):
                pipe.publish(channel, dumps({"run": run, "seq": seq}))
            pipe.execute()
        client.close()
        return began

    def daebus_send(run: str, count: int) -> float:
        broadcast.send(bench.name("warm-up"), {})  # connects the standalone client
        began = time.monotonic()
        for seq in range(count):
            broadcast.send(channel, {"run": run, "seq": seq})
        return began

    def daebus_send_message(run: str, count: int) -> float:
        with DaebusCaller(bench.name("nobody"), redis_url=bench.url) as caller:
            caller.connect()
            began = time.monotonic()
            for seq in range(count):
                caller.send_message(channel, {"run": run, "seq": seq})
        return began

    def daebus_send_many(run: str, count: int) -> float:
        broadcast.send_many([(bench.name("warm-up"), {})])
        began = time.monotonic()
        for start in range(0, count, size):
            end = min(count, start + size)
            broadcast.send_many([(channel, {"run": run, "seq": seq}) for seq in range(start, end)])
        return began

    return {
        "bare": bare,
        "bare_to_daebus": bare,
        "bare_pipeline": bare_pipeline,
        "daebus_send": daebus_send,
        "daebus_send_def_listener": daebus_send,
        "daebus_send_message": daebus_send_message,
        "daebus_send_many": daebus_send_many,
    }[variant]


def _one_run(bench: Bench, variant: str, listeners: _Listeners, count: int) -> dict[str, Any]:
    run = uuid.uuid4().hex
    publish = _publisher(variant, bench, listeners.channel)
    before = listeners.meter.snapshot()
    began = publish(run, count)
    ended = time.monotonic()
    publishing = listeners.meter.since(before)
    reports = drain(listeners, run, count, bench)
    usage = listeners.meter.since(before)
    if not reports:
        reports = [{"count": 0, "out_of_order": 0, "last": None}] * len(listeners.children)
    per_listener = []
    for report in reports:
        last = report.get("last")
        per_listener.append(
            {
                "received": report["count"],
                "lost": max(0, count - report["count"]),
                "out_of_order": report["out_of_order"],
                "seconds": (last - began) if last is not None else None,
            }
        )
    return {
        "published": count,
        "seconds": ended - began,
        "listeners": per_listener,
        "publisher_cpu": publishing["bench"],
        "listener_cpu": sum(v for k, v in usage.items() if k.startswith("l")),
        "server_cpu": usage["server"],
    }


def _merge(total: dict[str, Any] | None, run: dict[str, Any]) -> dict[str, Any]:
    if total is None:
        return run
    for key in ("published", "seconds", "publisher_cpu", "listener_cpu", "server_cpu"):
        total[key] += run[key]
    for mine, theirs in zip(total["listeners"], run["listeners"], strict=True):
        mine["received"] += theirs["received"]
        mine["lost"] += theirs["lost"]
        mine["out_of_order"] += theirs["out_of_order"]
        if mine["seconds"] is None or theirs["seconds"] is None:
            mine["seconds"] = None
        else:
            mine["seconds"] += theirs["seconds"]
    return total


def fanout(bench: Bench) -> dict[str, Any]:
    cfg = bench.config
    rows = []
    for count in (1, 4):
        variants = [v for v in VARIANTS if count == 1 or VARIANTS[v][1] != "daebus_def"]
        sets: dict[str, _Listeners] = {}
        totals: dict[str, dict[str, Any]] = {}
        try:
            for kind in {VARIANTS[v][1] for v in variants}:
                sets[kind] = _Listeners(bench, kind, count)
            time.sleep(1.0)  # let the new processes finish starting up
            for variant in variants:  # warm-up: connections, caches, first-use costs
                _one_run(bench, variant, sets[VARIANTS[variant][1]], cfg.fanout_warmup)
            for index in range(cfg.fanout_rounds):
                for variant in variants if index % 2 == 0 else variants[::-1]:
                    messages = cfg.fanout_messages
                    if variant in BATCHED:
                        messages = cfg.fanout_batch_messages // count
                    run = _one_run(bench, variant, sets[VARIANTS[variant][1]], messages)
                    totals[variant] = _merge(totals.get(variant), run)
        finally:
            for listeners in sets.values():
                with contextlib.suppress(Exception):
                    listeners.close()
        rates = {v: t["published"] / t["seconds"] for v, t in totals.items()}
        for variant in variants:
            total = totals[variant]
            label, _, versus = VARIANTS[variant]
            delivered = [
                (entry["received"] / entry["seconds"]) if entry["seconds"] else 0.0
                for entry in total["listeners"]
            ]
            rows.append(
                {
                    "variant": variant,
                    "label": label,
                    "listeners": count,
                    "published": total["published"],
                    "published_per_s": rates[variant],
                    "delivered_per_s_min": min(delivered),
                    "delivered_per_s": delivered,
                    "lost": sum(entry["lost"] for entry in total["listeners"]),
                    "out_of_order": sum(entry["out_of_order"] for entry in total["listeners"]),
                    "publisher_cpu_us": 1e6 * total["publisher_cpu"] / total["published"],
                    "listener_cpu_us": 1e6 * total["listener_cpu"] / total["published"] / count,
                    "server_cpu_us": 1e6 * total["server_cpu"] / total["published"],
                    "versus": versus or None,
                    "ratio": (rates[variant] / rates[versus]) if versus else None,
                }
            )
    return {"rows": rows, "primary": PRIMARY, "primary_batch": PRIMARY_BATCH}
