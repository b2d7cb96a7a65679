"""Request/reply scenarios: sequential latency, concurrent throughput, a streamed reply.

Every variant calls a service in another process: the daebus echo service (a ``Daebus``
app run with ``app.run``) or the bare responder. Variants take turns in rounds, in
order then in reverse order (A B C, C B A, ...), so a noisy neighbour or a warming CPU
slows every variant alike. Around each timed block the bench notes the CPU time used by
itself (the caller), by the service process and by the server, and the number of
commands the server processed: per call, that says where the time goes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from _baseline import BareCaller, BareSharedCaller, PerThreadCallers
from _common import ECHO_PAYLOAD, STREAM_PARTS, Meter, add_usage, ratio, summarize
from _setup import Bench

from daebus import AsyncDaebusCaller, DaebusCaller

BASELINE = "bare"
#: The row each target is checked on.
PRIMARY = "daebus"

LATENCY_VARIANTS = {
    "bare": "bare redis-py caller -> bare responder",
    "daebus": "DaebusCaller -> def action",
    "daebus_async_action": "DaebusCaller -> async def action",
    "async_caller": "AsyncDaebusCaller -> def action",
    "async_caller_async_action": "AsyncDaebusCaller -> async def action",
}

THROUGHPUT_VARIANTS = {
    "bare": "bare shared caller (threads) -> bare responder",
    # A reference, not the baseline: each thread its own bare caller and connections.
    "bare_per_thread": "bare caller per thread (threads) -> bare responder",
    "daebus": "DaebusCaller shared by threads -> def action",
    "daebus_async_action": "DaebusCaller shared by threads -> async def action",
    "async_caller": "AsyncDaebusCaller shared by tasks -> def action",
    "async_caller_async_action": "AsyncDaebusCaller shared by tasks -> async def action",
}

STREAM_VARIANTS = {
    "bare": "bare caller <- bare responder (100 PUBLISH + final)",
    "daebus": "DaebusCaller.stream() <- def action",
    "daebus_on_progress": "DaebusCaller.send_request(on_progress=) <- def action",
    "daebus_async_action": "DaebusCaller.stream() <- async def action",
    "async_caller": "AsyncDaebusCaller.stream() <- def action",
}


def rounds(variants: dict[str, str], count: int) -> list[list[str]]:
    """The order of each round: forwards, backwards, forwards, ..."""
    keys = list(variants)
    return [keys if index % 2 == 0 else keys[::-1] for index in range(count)]


def _action(variant: str) -> str:
    return "echo_async" if variant.endswith("async_action") else "echo"


def _check(reply: Any) -> None:
    if reply != ECHO_PAYLOAD:
        raise AssertionError(f"wrong echo reply: {reply!r}")


def _summary_rows(
    variants: dict[str, str],
    samples: dict[str, list[float]],
    usage: dict[str, dict[str, float]],
) -> list[dict[str, Any]]:
    """One row per variant: its timing summary, ratios to the baseline, CPU per call."""
    base = summarize(samples[BASELINE])
    rows = []
    for key, label in variants.items():
        stats = summarize(samples[key])
        rows.append(
            {
                "variant": key,
                "label": label,
                **stats,
                **{
                    f"{figure}_ratio": ratio(stats[f"{figure}_us"], base[f"{figure}_us"])
                    for figure in ("p50", "p99", "mean")
                },
                **_per_call(usage[key], _service_of(key), int(stats["n"])),
            }
        )
    return rows


def _per_call(usage: dict[str, float], service: str, calls: int) -> dict[str, float | None]:
    """CPU microseconds per call of caller, service and server; server commands per call."""
    if not calls:
        return {"caller_cpu_us": None, "service_cpu_us": None, "server_cpu_us": None}
    return {
        "caller_cpu_us": 1e6 * usage.get("bench", 0.0) / calls,
        "service_cpu_us": 1e6 * usage.get(service, 0.0) / calls,
        "server_cpu_us": 1e6 * usage.get("server", 0.0) / calls,
        "server_commands": usage.get("commands", 0.0) / calls,
    }


def _service_of(variant: str) -> str:
    return "bare" if variant.startswith("bare") else "daebus"


# -- 1. sequential latency -------------------------------------------------------------
def time_calls(
    call: Callable[[], Any], warmup: int, count: int, meter: Meter
) -> tuple[list[float], dict[str, float]]:
    _check(call())
    for _ in range(warmup):
        call()
    clock = time.perf_counter_ns
    samples = []
    before = meter.snapshot()
    for _ in range(count):
        started = clock()
        call()
        samples.append((clock() - started) / 1000)
    return samples, meter.since(before)


async def _async_time_calls(
    bench: Bench, service: str, action: str, warmup: int, count: int, meter: Meter
) -> tuple[list[float], dict[str, float]]:
    timeout = bench.config.call_timeout
    async with AsyncDaebusCaller(service, redis_url=bench.url, timeout=timeout) as caller:
        _check(await caller.send_request(action, ECHO_PAYLOAD))
        for _ in range(warmup):
            await caller.send_request(action, ECHO_PAYLOAD)
        clock = time.perf_counter_ns
        samples = []
        before = meter.snapshot()  # blocking, but nothing else runs on this loop
        for _ in range(count):
            started = clock()
            await caller.send_request(action, ECHO_PAYLOAD)
            samples.append((clock() - started) / 1000)
        return samples, meter.since(before)


def latency(bench: Bench) -> dict[str, Any]:
    cfg = bench.config
    service, channel = bench.echo_service(), bench.bare_responder()
    meter = Meter(bench.url, bench.service_pids())
    bare = BareCaller(bench.url, channel)
    caller = DaebusCaller(service, redis_url=bench.url, timeout=cfg.call_timeout).connect()
    samples: dict[str, list[float]] = {key: [] for key in LATENCY_VARIANTS}
    usage: dict[str, dict[str, float]] = {key: {} for key in LATENCY_VARIANTS}
    warm, count = cfg.latency_warmup, cfg.latency_calls
    try:
        for order in rounds(LATENCY_VARIANTS, cfg.rounds):
            for key in order:
                if key == "bare":
                    block = time_calls(partial(bare.call, ECHO_PAYLOAD), warm, count, meter)
                elif key.startswith("daebus"):
                    call = partial(caller.send_request, _action(key), ECHO_PAYLOAD)
                    block = time_calls(call, warm, count, meter)
                else:
                    block = asyncio.run(
                        _async_time_calls(bench, service, _action(key), warm, count, meter)
                    )
                samples[key] += block[0]
                add_usage(usage[key], block[1])
    finally:
        bare.close()
        caller.close()
        meter.close()
    rows = _summary_rows(LATENCY_VARIANTS, samples, usage)
    return {"rows": rows, "baseline": BASELINE, "primary": PRIMARY}


# -- 2. throughput with concurrent callers sharing one caller -------------------------
def thread_throughput(
    call: Callable[[], Any], callers: int, seconds: float, max_calls: int
) -> dict[str, Any]:
    counts = [0] * callers
    errors: list[str] = []
    end = [0.0]
    start = threading.Barrier(callers + 1)

    def worker(index: int) -> None:
        start.wait()
        done, stop_at = 0, end[0]
        while done < max_calls and time.perf_counter() < stop_at:
            try:
                call()
            except Exception as exc:
                errors.append(repr(exc))
                if len(errors) > 100:
                    break
            done += 1
        counts[index] = done

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(callers)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    end[0] = began + seconds
    start.wait()
    for thread in threads:
        thread.join(seconds + 60)
    elapsed = time.perf_counter() - began
    return {"calls": sum(counts) - len(errors), "seconds": elapsed, "errors": errors}


async def _async_throughput(
    bench: Bench, service: str, action: str, callers: int, meter: Meter
) -> dict[str, Any]:
    cfg = bench.config
    max_calls = int(cfg.throughput_seconds * 200_000)
    async with AsyncDaebusCaller(service, redis_url=bench.url, timeout=cfg.call_timeout) as caller:

        async def burst(duration: float) -> dict[str, Any]:
            loop = asyncio.get_running_loop()
            stop_at = loop.time() + duration
            errors: list[str] = []

            async def worker() -> int:
                done = 0
                while done < max_calls and loop.time() < stop_at:
                    try:
                        await caller.send_request(action, ECHO_PAYLOAD)
                    except Exception as exc:
                        errors.append(repr(exc))
                        if len(errors) > 100:
                            break
                    done += 1
                return done

            began = time.perf_counter()
            counts = await asyncio.gather(*(worker() for _ in range(callers)))
            elapsed = time.perf_counter() - began
            return {"calls": sum(counts) - len(errors), "seconds": elapsed, "errors": errors}

        _check(await caller.send_request(action, ECHO_PAYLOAD))
        await burst(cfg.throughput_warmup)
        before = meter.snapshot()
        result = await burst(cfg.throughput_seconds)
        result["usage"] = meter.since(before)
        return result


def throughput(bench: Bench) -> dict[str, Any]:
    cfg = bench.config
    service, channel = bench.echo_service(), bench.bare_responder()
    meter = Meter(bench.url, bench.service_pids())
    bare = BareSharedCaller(bench.url, channel)
    per_thread = PerThreadCallers(bench.url, channel, max(cfg.throughput_callers))
    caller = DaebusCaller(service, redis_url=bench.url, timeout=cfg.call_timeout).connect()
    bare_calls: dict[str, Callable[[], Any]] = {
        "bare": partial(bare.call, ECHO_PAYLOAD),
        "bare_per_thread": partial(per_thread.call, ECHO_PAYLOAD),
    }
    max_calls = int(cfg.throughput_seconds * 200_000)
    totals: dict[tuple[str, int], dict[str, Any]] = {}
    try:
        for order in rounds(THROUGHPUT_VARIANTS, cfg.throughput_rounds):
            for callers in cfg.throughput_callers:
                for key in order:
                    call = bare_calls.get(key) or partial(
                        caller.send_request, _action(key), ECHO_PAYLOAD
                    )
                    if key.startswith(("bare", "daebus")):
                        _check(call())
                        thread_throughput(call, callers, cfg.throughput_warmup, max_calls)
                        before = meter.snapshot()
                        result = thread_throughput(call, callers, cfg.throughput_seconds, max_calls)
                        result["usage"] = meter.since(before)
                    else:
                        result = asyncio.run(
                            _async_throughput(bench, service, _action(key), callers, meter)
                        )
                    total = totals.setdefault(
                        (key, callers), {"calls": 0, "seconds": 0.0, "errors": [], "usage": {}}
                    )
                    total["calls"] += result["calls"]
                    total["seconds"] += result["seconds"]
                    total["errors"] += result["errors"][:5]
                    add_usage(total["usage"], result["usage"])
    finally:
        bare.close()
        per_thread.close()
        caller.close()
        meter.close()
    rows = []
    for callers in cfg.throughput_callers:
        base = totals[BASELINE, callers]
        base_rate = base["calls"] / base["seconds"]
        for key, label in THROUGHPUT_VARIANTS.items():
            total = totals[key, callers]
            rate = total["calls"] / total["seconds"]
            rows.append(
                {
                    "variant": key,
                    "label": label,
                    "callers": callers,
                    "calls": total["calls"],
                    "seconds": total["seconds"],
                    "calls_per_s": rate,
                    "ratio": ratio(rate, base_rate),
                    "errors": total["errors"],
                    **_per_call(total["usage"], _service_of(key), total["calls"]),
                }
            )
    return {"rows": rows, "baseline": BASELINE, "primary": PRIMARY}


# -- 4. a 100-part streamed reply ------------------------------------------------------
def _check_parts(parts: list[Any]) -> None:
    if len(parts) != STREAM_PARTS + 1:
        raise AssertionError(f"a stream gave {len(parts)} parts, not {STREAM_PARTS + 1}")


def _time_streams(
    stream: Callable[[], list[Any]], warmup: int, count: int, meter: Meter
) -> tuple[list[float], dict[str, float]]:
    for _ in range(warmup):
        _check_parts(stream())
    clock = time.perf_counter_ns
    samples = []
    before = meter.snapshot()
    for _ in range(count):
        started = clock()
        _check_parts(stream())
        samples.append((clock() - started) / 1000)
    return samples, meter.since(before)


async def _async_time_streams(
    bench: Bench, service: str, meter: Meter
) -> tuple[list[float], dict[str, float]]:
    cfg = bench.config
    payload = {"parts": STREAM_PARTS}
    async with AsyncDaebusCaller(service, redis_url=bench.url, timeout=cfg.call_timeout) as caller:
        for _ in range(cfg.stream_warmup):
            _check_parts([part async for part in caller.stream("stream", payload)])
        clock = time.perf_counter_ns
        samples = []
        before = meter.snapshot()
        for _ in range(cfg.stream_count):
            started = clock()
            _check_parts([part async for part in caller.stream("stream", payload)])
            samples.append((clock() - started) / 1000)
        return samples, meter.since(before)


def stream(bench: Bench) -> dict[str, Any]:
    cfg = bench.config
    service, channel = bench.echo_service(), bench.bare_responder()
    meter = Meter(bench.url, bench.service_pids())
    bare = BareCaller(bench.url, channel)
    caller = DaebusCaller(service, redis_url=bench.url, timeout=cfg.call_timeout).connect()
    payload = {"parts": STREAM_PARTS}

    def on_progress() -> list[Any]:
        parts: list[Any] = []
        parts.append(caller.send_request("stream", payload, on_progress=parts.append))
        return parts

    streams: dict[str, Callable[[], list[Any]]] = {
        "bare": lambda: bare.stream(STREAM_PARTS),
        "daebus": lambda: list(caller.stream("stream", payload)),
        "daebus_on_progress": on_progress,
        "daebus_async_action": lambda: list(caller.stream("stream_async", payload)),
    }
    samples: dict[str, list[float]] = {key: [] for key in STREAM_VARIANTS}
    usage: dict[str, dict[str, float]] = {key: {} for key in STREAM_VARIANTS}
    try:
        for order in rounds(STREAM_VARIANTS, cfg.rounds):
            for key in order:
                if key in streams:
                    block = _time_streams(streams[key], cfg.stream_warmup, cfg.stream_count, meter)
                else:
                    block = asyncio.run(_async_time_streams(bench, service, meter))
                samples[key] += block[0]
                add_usage(usage[key], block[1])
    finally:
        bare.close()
        caller.close()
        meter.close()
    # CPU figures are per stream of STREAM_PARTS + 1 messages.
    rows = _summary_rows(STREAM_VARIANTS, samples, usage)
    return {"rows": rows, "baseline": BASELINE, "primary": PRIMARY, "parts": STREAM_PARTS}
