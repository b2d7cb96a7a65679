"""Where the time of a call goes when many threads share one ``DaebusCaller``.

    python bench/threads.py [--threads 32] [--seconds 4] [--runs 3] [--action echo]

Starts a private server and the bench's echo service, then calls the service from
``--threads`` threads sharing one ``DaebusCaller`` (as ``run.py``'s throughput scenario
does) for ``--seconds``, ``--runs`` times. Each run prints calls per second and, per
call: the CPU time (user and system) of the calling process, of the service and of the
server; the context switches of the calling process, of its portal thread and of the
service; and the share of the machine that stayed idle during the run (``/proc/stat``,
so Linux only). ``--action echo_async`` calls the ``async def`` action instead of the
``def`` one. Figures to compare between commits (``PYTHONPATH=other/src``), not targets.
"""

from __future__ import annotations

import argparse
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis
from _common import ECHO_PAYLOAD
from _procs import Processes
from _rpc import thread_throughput

from daebus import DaebusCaller
from daebus._portal import get_portal
from daebus.server import EmbeddedServer


@dataclass
class Sample:
    """Counters of the processes and of the machine at one moment."""

    cpu: dict[str, tuple[float, float]]  # name -> (user, system) seconds
    switches: dict[str, int]  # name -> context switches, voluntary and not
    machine: list[int]  # the first line of /proc/stat: jiffies per state


def _machine() -> list[int]:
    return [int(field) for field in Path("/proc/stat").read_text().split()[1:9]]


def _switches(pid: int, thread: int | None = None) -> int:
    """Context switches (voluntary and not) of every thread of ``pid``, or of one."""
    tasks = Path(f"/proc/{pid}/task")
    total = 0
    for task in [tasks / str(thread)] if thread is not None else tasks.iterdir():
        try:
            status = (task / "status").read_text()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        total += sum(
            int(line.split()[1])
            for line in status.splitlines()
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"))
        )
    return total


def one_run(
    caller: DaebusCaller, action: str, threads: int, seconds: float, processes: dict[str, int]
) -> str:
    """Call from ``threads`` threads for ``seconds``; return a line of figures per call.

    The calls are made as in ``run.py``'s throughput scenario (``_rpc.thread_throughput``),
    a warm-up first.
    """
    watched = {name: psutil.Process(pid) for name, pid in processes.items()}
    portal = get_portal().thread.native_id
    assert portal is not None

    def call() -> Any:
        return caller.send_request(action, ECHO_PAYLOAD)

    def sample() -> Sample:
        cpu = {name: process.cpu_times() for name, process in watched.items()}
        # The calling threads have ended by the second sample, and their counts in /proc
        # with them; the process's usage keeps what its ended threads did.
        usage = resource.getrusage(resource.RUSAGE_SELF)
        switches = {
            "caller": usage.ru_nvcsw + usage.ru_nivcsw,
            "portal": _switches(watched["caller"].pid, portal),
            "service": _switches(watched["service"].pid),
        }
        return Sample(
            {name: (times.user, times.system) for name, times in cpu.items()},
            switches,
            _machine(),
        )

    max_calls = int(seconds * 200_000)
    thread_throughput(call, threads, min(1.0, seconds / 2), max_calls)  # warm-up
    before = sample()
    result = thread_throughput(call, threads, seconds, max_calls)
    after = sample()
    calls, errors = int(result["calls"]), result["errors"]
    failed = f" | {len(errors)} failed calls, first: {errors[0]}" if errors else ""
    if calls <= 0:
        return "no calls completed" + failed

    def us(name: str, which: int) -> float:
        return (after.cpu[name][which] - before.cpu[name][which]) / calls * 1e6

    def per_call(name: str) -> float:
        return (after.switches[name] - before.switches[name]) / calls

    jiffies = [b - a for a, b in zip(before.machine, after.machine, strict=True)]
    idle = (jiffies[3] + jiffies[4]) / max(1, sum(jiffies))  # idle and iowait
    return (
        f"{calls / result['seconds']:8,.0f} calls/s | CPU us/call: caller "
        f"{us('caller', 0):.0f}+{us('caller', 1):.0f}, service {us('service', 0):.0f}"
        f"+{us('service', 1):.0f}, server {us('server', 0) + us('server', 1):.0f} | "
        f"switches/call: caller {per_call('caller'):.2f} (portal {per_call('portal'):.2f}), "
        f"service {per_call('service'):.2f} | machine idle {idle:.0%}{failed}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--action", default="echo", choices=["echo", "echo_async"])
    args = parser.parse_args()
    with EmbeddedServer() as server, Processes(server.url, ttl=600) as procs:
        service = "bench-threads-echo"
        child = procs.spawn("daebus-service", "--name", service)
        procs.wait_subscribed(service, watch=[child])
        with redis.Redis.from_url(server.url) as client:
            server_pid = int(client.info("server")["process_id"])
        pids = {"caller": psutil.Process().pid, "service": child.pid, "server": server_pid}
        with DaebusCaller(service, redis_url=server.url, timeout=30).connect() as caller:
            caller.send_request(args.action, ECHO_PAYLOAD)
            print(f"{args.threads} threads sharing a DaebusCaller -> {args.action}")
            for _ in range(args.runs):
                print(one_run(caller, args.action, args.threads, args.seconds, pids), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
