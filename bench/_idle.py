"""Idle cost: CPU, wake-ups and RSS of a service and a caller that have nothing to do.

Each process is started, used once (so lazily created threads and connections exist),
left alone for a second, then watched for ``idle_seconds``: CPU is utime+stime of the
whole process (psutil), wake-ups are the context switches (voluntary and not) summed
over its threads from ``/proc/<pid>/task/*/status``, RSS is read at the end.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psutil
from _procs import Child
from _setup import Bench

from daebus import DaebusCaller


def _switches(pid: int) -> dict[str, int]:
    """Context switches so far, per thread id."""
    counts = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        total = 0
        try:
            for line in (task / "status").read_text().splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split(":")[1])
        except (OSError, ValueError):
            continue
        counts[task.name] = total
    return counts


def _sample(pid: int) -> dict[str, Any]:
    process = psutil.Process(pid)
    times = process.cpu_times()
    return {
        "cpu": times.user + times.system,
        "switches": _switches(pid),
        "rss": process.memory_info().rss,
        "threads": process.num_threads(),
    }


def idle(bench: Bench) -> dict[str, Any]:
    cfg, procs = bench.config, bench.procs
    children: list[Child] = []
    watched: dict[str, Child] = {}
    try:
        # A daebus service, called once from here.
        service = bench.name("idle")
        child = procs.spawn("daebus-service", "--name", service, "--listen", bench.name("idle-bc"))
        children.append(child)
        procs.wait_subscribed(service, watch=[child])
        with DaebusCaller(service, redis_url=bench.url) as caller:
            caller.send_request("echo", {"hello": "idle"})
        watched["daebus service"] = child
        # A process holding a connected DaebusCaller that made one call.
        ready = procs.dir / "daebus-caller.ready"
        child = procs.spawn("daebus-caller", "--name", service, "--ready", str(ready))
        children.append(child)
        procs.wait_file(ready, child)
        watched["daebus caller"] = child
        # The bare pair, for reference.
        channel = bench.name("idle-bare")
        child = procs.spawn("bare-responder", "--name", channel)
        children.append(child)
        procs.wait_subscribed(channel, watch=[child])
        watched["bare responder"] = child
        ready = procs.dir / "bare-caller.ready"
        child = procs.spawn("bare-caller", "--name", channel, "--ready", str(ready))
        children.append(child)
        procs.wait_file(ready, child)
        watched["bare caller"] = child

        time.sleep(1.0)
        before = {name: _sample(child.pid) for name, child in watched.items()}
        began = time.monotonic()
        time.sleep(cfg.idle_seconds)
        after = {name: _sample(child.pid) for name, child in watched.items()}
        window = time.monotonic() - began
    finally:
        procs.stop(*children)
    rows = []
    for name in watched:
        first, last = before[name], after[name]
        wakeups = sum(
            max(0, count - first["switches"].get(tid, 0)) for tid, count in last["switches"].items()
        )
        cpu = last["cpu"] - first["cpu"]
        rows.append(
            {
                "process": name,
                "window_s": window,
                "cpu_s": cpu,
                "cpu_percent": 100 * cpu / window,
                "wakeups": wakeups,
                "wakeups_per_s": wakeups / window,
                "threads": last["threads"],
                "rss_mb": last["rss"] / 2**20,
            }
        )
    return {"rows": rows}
