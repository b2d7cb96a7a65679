"""Durable requests against pub/sub requests: sequential latency of one caller.

``DaebusCaller.send_request("echo", payload)`` (published on the service's channel)
and ``send_request("echo", payload, durable=True)`` (appended to the service's request
stream, read by the service as a consumer group) call the same ``def`` action of the
bench's echo service, one call at a time, taking turns in rounds (forwards, then
backwards). The baseline is the pub/sub request.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from _common import ECHO_PAYLOAD, Meter, add_usage, ratio, summarize
from _rpc import rounds, time_calls
from _setup import Bench

from daebus import DaebusCaller

BASELINE = "pubsub"
VARIANTS = {
    "pubsub": "DaebusCaller.send_request() -> def action",
    "durable": "DaebusCaller.send_request(durable=True) -> def action",
}


def durable_request(bench: Bench) -> dict[str, Any]:
    cfg = bench.config
    service = bench.echo_service()
    meter = Meter(bench.url, {"daebus": bench.service_pids()["daebus"]})
    caller = DaebusCaller(service, redis_url=bench.url, timeout=cfg.call_timeout).connect()
    calls = {
        "pubsub": partial(caller.send_request, "echo", ECHO_PAYLOAD),
        "durable": partial(caller.send_request, "echo", ECHO_PAYLOAD, durable=True),
    }
    samples: dict[str, list[float]] = {key: [] for key in VARIANTS}
    usage: dict[str, dict[str, float]] = {key: {} for key in VARIANTS}
    try:
        for order in rounds(VARIANTS, cfg.rounds):
            for key in order:
                block = time_calls(calls[key], cfg.latency_warmup, cfg.latency_calls, meter)
                samples[key] += block[0]
                add_usage(usage[key], block[1])
    finally:
        caller.close()
        meter.close()
    base = summarize(samples[BASELINE])
    rows = []
    for key, label in VARIANTS.items():
        stats = summarize(samples[key])
        n = max(1, int(stats["n"]))
        rows.append(
            {
                "variant": key,
                "label": label,
                **stats,
                "p50_ratio": ratio(stats["p50_us"], base["p50_us"]),
                "p99_ratio": ratio(stats["p99_us"], base["p99_us"]),
                "mean_ratio": ratio(stats["mean_us"], base["mean_us"]),
                "caller_cpu_us": 1e6 * usage[key].get("bench", 0.0) / n,
                "service_cpu_us": 1e6 * usage[key].get("daebus", 0.0) / n,
                "server_cpu_us": 1e6 * usage[key].get("server", 0.0) / n,
                "server_commands": usage[key].get("commands", 0.0) / n,
            }
        )
    return {"rows": rows, "baseline": BASELINE}
