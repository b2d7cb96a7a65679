"""Durable fan-out: small messages through a stream to 1 and 4 services, each its own group.

Each message is ``{"run": id, "seq": n}``, appended to one stream; every consuming
service is a separate process and its own consumer group, so each gets every message.
Variants (each pairs a producer with a set of consumer processes):

- **bare**: a pipelined ``XADD`` loop (:mod:`_stream_baseline`) -> bare consumers
  (``XREADGROUP COUNT 100 BLOCK``, tally, one ``XACK`` of the batch). The baseline.
- **daebus**: ``broadcast.send_many(..., durable=True)`` in batches from the plain script
  -> services with an ``@app.listen(channel, durable=True)`` ``async def`` listener.
- **bare_to_daebus**: the bare producer -> the daebus services (separates the
  producer's cost from the listeners').
- **bare_ack_each**: the bare producer -> bare consumers reading 16 at a time and
  acknowledging each entry on its own, as daebus's consumer does (a reference row).
- **faststream** (``faststream`` scenario only): FastStream's producer -> FastStream
  apps each with a ``StreamSub`` group (``faststream_streams.py``, run by another
  virtualenv's python).

Figures, per variant: published/s (messages / time to send them), delivered/s of each
service (its messages / time from the start of sending to its last arrival) and in all
(every service's messages / time to the last arrival anywhere), lost (sent minus
received, per service, summed), out of order (a ``seq`` not above every one seen before
it). After sending, the bench asks every service for its tally until every count is
complete, or has not grown for ``drain_stall`` seconds (see :func:`_fanout.drain`).

Every stream keeps ``2 x`` a run's messages (``maxlen``), the most a run can leave
unread: with the default 10,000, a burst sent faster than its listeners read would be
trimmed before they read it, and counted lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from _common import Meter, pubsub_of
from _fanout import collect_reports, drain
from _procs import Child
from _setup import Bench
from _stream_baseline import produce, wait_groups

from daebus import CallTimeoutError, DaebusCaller, broadcast, protocol

#: Where FastStream's virtualenv is (its ``bin/python`` runs ``faststream_streams.py``).
FASTSTREAM_ENV = "DAEBUS_BENCH_FASTSTREAM_VENV"
FASTSTREAM_SCRIPT = Path(__file__).resolve().parent / "faststream_streams.py"
#: Entries per read, and one XACK each, as daebus's consumer (runtime.durable.PREFETCH).
DAEBUS_LIKE_COUNT = 16


@dataclass(frozen=True)
class Variant:
    label: str
    producer: str  # "bare", "daebus" or "faststream"
    consumers: str  # "bare", "bare_ack_each", "daebus" or "faststream"


VARIANTS = {
    "bare": Variant(
        "bare pipelined XADD -> bare XREADGROUP COUNT 100 + XACK/batch", "bare", "bare"
    ),
    "daebus": Variant(
        "broadcast.send_many(durable=True) -> durable async listeners", "daebus", "daebus"
    ),
    "bare_to_daebus": Variant(
        "bare pipelined XADD -> durable async listeners (cross-check)", "bare", "daebus"
    ),
    "bare_ack_each": Variant(
        "bare pipelined XADD -> bare XREADGROUP COUNT 16 + XACK each", "bare", "bare_ack_each"
    ),
    "faststream": Variant(
        "FastStream publish(stream=, pipeline=) -> StreamSub groups", "faststream", "faststream"
    ),
}


def faststream_python() -> str | None:
    """The python of FastStream's virtualenv, if ``$DAEBUS_BENCH_FASTSTREAM_VENV`` names one."""
    venv = os.environ.get(FASTSTREAM_ENV)
    if not venv:
        return None
    python = Path(venv) / "bin" / "python"
    return str(python) if python.exists() else None


class _Consumers:
    """``count`` consuming processes of one kind, each its own group of one stream."""

    def __init__(self, bench: Bench, kind: str, count: int) -> None:
        self.bench = bench
        self.kind = kind
        self.channel = bench.name(f"dur{count}-{kind}")
        # daebus's stream key, for every kind: the bare producer feeds daebus's listeners.
        self.stream = protocol.stream_key(self.channel)
        self.children: list[Child] = []
        self.callers: list[DaebusCaller] = []
        self._client = redis.Redis.from_url(bench.url)
        self._pubsub: Any = None
        self._reports = bench.name(f"dur{count}-{kind}-reports-{uuid.uuid4().hex[:6]}")
        self._asks = bench.name(f"dur{count}-{kind}-asks")  # FastStream's report channel
        procs, url = bench.procs, bench.url
        groups = set()
        for index in range(count):
            group = bench.name(f"dur{count}-{kind}-{index}")
            groups.add(group)
            if kind == "daebus":  # the service's name is its group
                child = procs.spawn("daebus-service", "--name", group, "--durable", self.channel)
                self.callers.append(
                    DaebusCaller(group, redis_url=url, timeout=bench.config.call_timeout)
                )
            elif kind == "faststream":
                python = faststream_python()
                assert python is not None
                child = procs.spawn(
                    "consume",
                    *("--stream", self.stream, "--group", group, "--reports", self._asks),
                    python=python,
                    script=FASTSTREAM_SCRIPT,
                )
            else:
                args = ["--name", self.stream, "--group", group]
                if kind == "bare_ack_each":
                    args += ["--count", str(DAEBUS_LIKE_COUNT), "--ack-each"]
                child = procs.spawn("bare-stream-consumer", *args)
            self.children.append(child)
        for caller in self.callers:
            procs.wait_subscribed(caller.target_service, watch=self.children)
            caller.connect()
        if kind == "faststream":
            procs.wait_subscribed(self._asks, count, timeout=60.0, watch=self.children)
        wait_groups(self._client, self.stream, groups, timeout=60.0)
        self.meter = Meter(url, {f"consumer{i}": c.pid for i, c in enumerate(self.children)})
        if kind != "daebus":
            self._pubsub = pubsub_of(self._client, ignore_subscribe_messages=True)
            self._pubsub.subscribe(self._reports)
            procs.wait_subscribed(self._reports)

    def query(self, run: str, timeout: float) -> list[dict[str, Any]] | None:
        """Every consumer's tally of ``run``, or None if one did not answer in time."""
        if self.kind == "daebus":
            try:
                return [
                    caller.send_request("report", {"run": run}, timeout=timeout)
                    for caller in self.callers
                ]
            except CallTimeoutError:
                return None
        ask = json.dumps({"report": run, "reply_to": self._reports})
        if self.kind == "faststream":
            self._client.publish(self._asks, ask)
        else:  # in the stream: answered after every entry before it
            self._client.xadd(self.stream, {"data": ask})
        return collect_reports(self._pubsub, len(self.children), timeout)

    def close(self) -> None:
        self.meter.close()
        for caller in self.callers:
            caller.close()
        if self._pubsub is not None:
            self._pubsub.close()
        self.bench.procs.stop(*self.children)
        with contextlib.suppress(redis.RedisError):
            self._client.delete(self.stream)
        self._client.close()


def _maxlen(bench: Bench) -> int:
    return max(protocol.DEFAULT_STREAM_MAXLEN, 2 * bench.config.durable_messages)


def _produce(
    bench: Bench, producer: str, consumers: _Consumers, run: str, count: int
) -> tuple[float, float, float]:
    """Send messages 0..count-1 of ``run``: (began, ended, the producer's CPU seconds)."""
    cfg = bench.config
    batch, maxlen = cfg.durable_batch, _maxlen(bench)
    if producer == "faststream":
        python = faststream_python()
        assert python is not None
        done = subprocess.run(
            [
                *(python, str(FASTSTREAM_SCRIPT), "produce", "--url", bench.url),
                *("--stream", consumers.stream, "--run", run, "--count", str(count)),
                *("--batch", str(batch), "--maxlen", str(maxlen)),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the FastStream producer failed:\n{done.stderr[-3000:]}")
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        return figures["began"], figures["ended"], figures["cpu"]
    if producer == "bare":
        client = redis.Redis.from_url(bench.url)
        client.ping()
        began, cpu = time.monotonic(), time.process_time()
        produce(client, consumers.stream, run, count, batch, maxlen)
        ended, cpu = time.monotonic(), time.process_time() - cpu
        client.close()
        return began, ended, cpu
    # As a user's script would: the standalone client, connected by a first send.
    broadcast.send(bench.name("warm-up"), {}, durable=True, maxlen=1)
    began, cpu = time.monotonic(), time.process_time()
    channel = consumers.channel
    for start in range(0, count, batch):
        end = min(count, start + batch)
        messages = [(channel, {"run": run, "seq": seq}) for seq in range(start, end)]
        broadcast.send_many(messages, durable=True, maxlen=maxlen)
    return began, time.monotonic(), time.process_time() - cpu


def _one_run(bench: Bench, variant: Variant, consumers: _Consumers, count: int) -> dict[str, Any]:
    run = uuid.uuid4().hex
    before = consumers.meter.snapshot()
    began, ended, producer_cpu = _produce(bench, variant.producer, consumers, run, count)
    # A consumer at 500 messages/s still gets the time it needs before it counts as lost
    # (one that stops making progress is given up on after drain_stall anyway).
    reports = drain(consumers, run, count, bench, max(bench.config.drain_deadline, count / 500))
    usage = consumers.meter.since(before)
    if not reports:
        reports = [{"count": 0, "out_of_order": 0, "last": None}] * len(consumers.children)
    lasts = [report["last"] for report in reports if report.get("last") is not None]
    return {
        "published": count,
        "seconds": ended - began,
        "span": (max(lasts) - began) if lasts else None,
        "services": [
            {
                "received": report["count"],
                "lost": max(0, count - report["count"]),
                "out_of_order": report["out_of_order"],
                "seconds": (report["last"] - began) if report.get("last") is not None else None,
            }
            for report in reports
        ],
        "producer_cpu": producer_cpu,
        "consumer_cpu": sum(v for k, v in usage.items() if k.startswith("consumer")),
        "server_cpu": usage["server"],
    }


def _add(total: dict[str, Any] | None, run: dict[str, Any]) -> dict[str, Any]:
    """Pool the runs of one variant (times add up: rates are totals over totals)."""
    if total is None:
        return run

    def plus(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a + b

    for key in ("published", "seconds", "producer_cpu", "consumer_cpu", "server_cpu"):
        total[key] += run[key]
    total["span"] = plus(total["span"], run["span"])
    for mine, theirs in zip(total["services"], run["services"], strict=True):
        for key in ("received", "lost", "out_of_order"):
            mine[key] += theirs[key]
        mine["seconds"] = plus(mine["seconds"], theirs["seconds"])
    return total


def _rows(
    variants: list[str], totals: dict[str, dict[str, Any]], count: int, versus: dict[str, str]
) -> list[dict[str, Any]]:
    def rate(messages: float, seconds: float | None) -> float:
        return messages / seconds if seconds else 0.0

    delivered = {
        v: rate(sum(s["received"] for s in t["services"]), t["span"]) for v, t in totals.items()
    }
    rows = []
    for variant in variants:
        total = totals[variant]
        each = [rate(s["received"], s["seconds"]) for s in total["services"]]
        against = versus.get(variant)
        rows.append(
            {
                "variant": variant,
                "label": VARIANTS[variant].label,
                "services": count,
                "messages": total["published"],
                "published_per_s": rate(total["published"], total["seconds"]),
                "delivered_per_s": each,
                "delivered_per_s_min": min(each),
                "delivered_all_per_s": delivered[variant],
                "lost": sum(s["lost"] for s in total["services"]),
                "out_of_order": sum(s["out_of_order"] for s in total["services"]),
                "producer_cpu_us": 1e6 * total["producer_cpu"] / total["published"],
                "consumer_cpu_us": 1e6 * total["consumer_cpu"] / total["published"] / count,
                "server_cpu_us": 1e6 * total["server_cpu"] / total["published"],
                "versus": against,
                "ratio": (delivered[variant] / delivered[against])
                if against and delivered[against]
                else None,
            }
        )
    return rows


def run_variants(
    bench: Bench, variants: list[str], versus: dict[str, str], counts: tuple[int, ...] = (1, 4)
) -> list[dict[str, Any]]:
    """Every variant to each number of services, in alternating rounds; one row each."""
    cfg = bench.config
    rows = []
    for count in counts:
        sets: dict[str, _Consumers] = {}
        totals: dict[str, dict[str, Any]] = {}
        try:
            for kind in dict.fromkeys(VARIANTS[v].consumers for v in variants):
                sets[kind] = _Consumers(bench, kind, count)
            time.sleep(1.0)  # let the new processes finish starting up
            for variant in variants:  # warm-up: connections, caches, first-use costs
                spec = VARIANTS[variant]
                _one_run(bench, spec, sets[spec.consumers], cfg.durable_warmup)
            for index in range(cfg.durable_rounds):
                for variant in variants if index % 2 == 0 else variants[::-1]:
                    spec = VARIANTS[variant]
                    run = _one_run(bench, spec, sets[spec.consumers], cfg.durable_messages)
                    totals[variant] = _add(totals.get(variant), run)
        finally:
            for consumers in sets.values():
                with contextlib.suppress(Exception):
                    consumers.close()
        rows += _rows(variants, totals, count, versus)
    _clean_up(bench)
    return rows


def _clean_up(bench: Bench) -> None:
    client = redis.Redis.from_url(bench.url)
    try:
        client.delete(protocol.stream_key(bench.name("warm-up")))
    finally:
        client.close()


def durable(bench: Bench) -> dict[str, Any]:
    """The ``durable`` scenario: daebus against the bare stream loop."""
    variants = ["bare", "daebus", "bare_to_daebus", "bare_ack_each"]
    versus = {"daebus": "bare", "bare_to_daebus": "bare", "bare_ack_each": "bare"}
    return {"rows": run_variants(bench, variants, versus), "primary": "daebus"}


def faststream(bench: Bench) -> dict[str, Any]:
    """The ``faststream`` scenario: daebus against FastStream, if its virtualenv is there."""
    if faststream_python() is None:
        return {
            "skipped": f"FastStream's virtualenv not found: set ${FASTSTREAM_ENV} to a"
            " virtualenv made with `python3 -m venv DIR && DIR/bin/pip install"
            " 'faststream[redis]'` (outside the repository) to run it"
        }
    variants = ["daebus", "faststream"]
    return {
        "rows": run_variants(bench, variants, {"daebus": "faststream"}),
        "primary": "daebus",
    }
