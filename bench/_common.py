"""What the bench's processes share: message shapes, listener tallies, statistics."""

from __future__ import annotations

import math
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

#: The payload of every echo request (small, like a typical RPC).
ECHO_PAYLOAD = {"text": "hello", "n": 42}
#: Parts of the streamed reply, before the final one.
STREAM_PARTS = 100
#: How long the load-sharing scenario's handlers take (they sleep).
WORK_SECONDS = 0.005


class Tally:
    """A listener's per-run counts: messages, out-of-order ones, first and last arrival.

    A message is out of order when its ``seq`` is not above every ``seq`` seen before it
    in the same run (a duplicate counts too). Arrival times are ``time.monotonic()``,
    which is system-wide on Linux, so the bench can compare them with its own clock.
    """

    def __init__(self) -> None:
        self.runs: dict[Any, list[Any]] = {}

    def add(self, message: Any) -> None:
        now = time.monotonic()
        run = message.get("run") if isinstance(message, dict) else None
        seq = message.get("seq", -1) if isinstance(message, dict) else -1
        entry = self.runs.get(run)
        if entry is None:
            # count, highest seq, out of order, first arrival, last arrival
            self.runs[run] = [1, seq, 0, now, now]
            return
        entry[0] += 1
        if seq <= entry[1]:
            entry[2] += 1
        else:
            entry[1] = seq
        entry[4] = now

    def report(self, run: Any) -> dict[str, Any]:
        entry = self.runs.get(run)
        if entry is None:
            return {"count": 0, "out_of_order": 0, "first": None, "last": None}
        return {"count": entry[0], "out_of_order": entry[2], "first": entry[3], "last": entry[4]}


def pubsub_of(client: Any, **options: Any) -> Any:
    """``client.pubsub(**options)``: redis-py annotates it in some releases and not others,
    so it is called through an untyped name that type-checks on either.
    """
    factory: Callable[..., Any] = client.pubsub
    return factory(**options)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of an already sorted list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(samples_us: list[float]) -> dict[str, float]:
    """p50, p99, mean, min and count of latency samples in microseconds."""
    values = sorted(samples_us)
    return {
        "n": len(values),
        "p50_us": percentile(values, 0.50),
        "p99_us": percentile(values, 0.99),
        "mean_us": sum(values) / len(values) if values else math.nan,
        "min_us": values[0] if values else math.nan,
    }


def ratio(value: float | None, baseline: float | None) -> float | None:
    """``value / baseline``, or None when either is missing or the baseline is zero."""
    if value is None or baseline is None or baseline == 0 or math.isnan(baseline):
        return None
    return value / baseline


class Meter:
    """CPU seconds of the bench itself, of some child processes and of the server.

    ``snapshot()`` then ``since(snapshot)`` gives what each used in between, plus how
    many commands the server processed (INFO stats; the two INFO calls count too).
    """

    def __init__(self, url: str, pids: dict[str, int]) -> None:
        import psutil
        import redis

        self._client = redis.Redis.from_url(url)
        self._processes = {name: psutil.Process(pid) for name, pid in pids.items()}

    def snapshot(self) -> dict[str, float]:
        values = {"bench": time.process_time()}
        for name, process in self._processes.items():
            times = process.cpu_times()
            values[name] = times.user + times.system
        info = self._client.info()
        values["server"] = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        values["commands"] = float(info["total_commands_processed"])
        return values

    def since(self, before: dict[str, float]) -> dict[str, float]:
        after = self.snapshot()
        return {name: after[name] - before[name] for name in before}

    def close(self) -> None:
        self._client.close()


def add_usage(total: dict[str, float], usage: dict[str, float]) -> None:
    for name, value in usage.items():
        total[name] = total.get(name, 0.0) + value


def callgrind_instructions(valgrind: str, command: Sequence[str]) -> int:
    """Run ``command`` under ``valgrind --tool=callgrind``; the instructions it ran."""
    out = subprocess.run(
        [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", *command],
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : ([\d,]+)", out.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{out.stderr}")
    return int(found.group(1).replace(",", ""))


def instructions_per_unit(
    valgrind: str, command_for: Callable[[int], Sequence[str]], small: int, large: int
) -> float:
    """What one unit (a message, a request, a call) costs the traced process.

    ``command_for(n)`` runs ``n`` units. Two runs, ``small`` and ``large``: the difference
    of their totals divided by the difference in units leaves start-up and shutdown out.
    """
    totals = [callgrind_instructions(valgrind, command_for(n)) for n in (small, large)]
    return (totals[1] - totals[0]) / (large - small)
