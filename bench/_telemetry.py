"""What telemetry costs a round trip: sequential RPC latency with it off and on.

The same ``def`` echo action, called one at a time by one ``DaebusCaller`` as in the
latency scenario, in services that differ only by what they measure: one with
everything off (the default, and the baseline) and one per entry of :data:`VARIANTS`,
each a process of its own started with the entry's flags of ``bench/_services.py``.
Variants take turns in rounds (forwards, then backwards), twice as many as the
latency scenario's. A variant that needs an
optional package the bench's environment lacks is left out, with a note.

Each block of calls has a service and a caller of its own, alone: started for it,
stopped after it. The metrics variant serves ``/metrics`` on a port of its own, and is
scraped after each block: its count of echo calls proves the metrics were on.
"""

from __future__ import annotations

import importlib.util
import socket
import time
import urllib.request
import uuid
from functools import partial
from typing import Any

from _common import ECHO_PAYLOAD, Meter, add_usage, ratio, summarize
from _rpc import rounds, time_calls
from _setup import Bench

from daebus import DaebusCaller

BASELINE = "off"


class Variant:
    """A service to time: its label, its flags of ``_services.py``, what it needs."""

    def __init__(self, label: str, flags: tuple[str, ...] = (), needs: str | None = None) -> None:
        self.label = label
        self.flags = flags
        self.needs = needs  # a module the service imports for it


#: The baseline first. ``{port}`` in a flag is replaced by a free loopback port.
VARIANTS = {
    "off": Variant("DaebusCaller -> def action, telemetry off (the default)"),
    "metrics": Variant(
        "DaebusCaller -> def action, metrics on (served)",
        ("--metrics-port", "{port}"),
        needs="prometheus_client",
    ),
    "tracing": Variant(
        "DaebusCaller -> def action, tracing on (an SDK provider exporting nowhere)",
        ("--tracing",),
        needs="opentelemetry.sdk",
    ),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _scraped_echo_calls(port: int, service: str) -> float:
    """The service's count of echo requests answered, read from its /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "daebus_messages_received_total"
        and sample.labels.get("service") == service
        and sample.labels.get("name") == "echo"
        and sample.labels.get("status") == "ok"
    )


def _timed_block(bench: Bench, key: str, variant: Variant) -> tuple[list[float], dict[str, float]]:
    """Start the variant's service, time the calls, check its count, stop it.

    One service and one caller at a time: with several alive, the first one started
    answered markedly faster than an identical one started after it, whatever the
    order of the calls.
    """
    cfg = bench.config
    service = bench.name(f"telemetry-{key}-{uuid.uuid4().hex[:6]}")
    port = _free_port()
    flags = [flag.replace("{port}", str(port)) for flag in variant.flags]
    child = bench.procs.spawn("daebus-service", "--name", service, *flags)
    try:
        bench.procs.wait_subscribed(service, watch=[child])
        meter = Meter(bench.url, {key: child.pid})
        caller = DaebusCaller(service, redis_url=bench.url, timeout=cfg.call_timeout).connect()
        try:
            call = partial(caller.send_request, "echo", ECHO_PAYLOAD)
            block = time_calls(call, cfg.latency_warmup, cfg.latency_calls, meter)
        finally:
            caller.close()
            meter.close()
        if "--metrics-port" in variant.flags:
            _check_counted(port, service, 1 + cfg.latency_warmup + cfg.latency_calls)
    finally:
        bench.procs.stop(child)
    return block


def _check_counted(port: int, service: str, expected: int) -> None:
    """Every call, the first check and the warm-up included, was counted.

    Each is counted as its handler ends, just after its reply went out: the last one
    may be a moment late.
    """
    deadline = time.monotonic() + 5.0
    while (counted := _scraped_echo_calls(port, service)) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"/metrics counted {counted} echo calls, not {expected}")
        time.sleep(0.05)


def telemetry(bench: Bench) -> dict[str, Any]:
    cfg = bench.config
    variants = {
        key: variant
        for key, variant in VARIANTS.items()
        if variant.needs is None or importlib.util.find_spec(variant.needs) is not None
    }
    skipped = sorted(set(VARIANTS) - set(variants))
    samples: dict[str, list[float]] = {key: [] for key in variants}
    usage: dict[str, dict[str, float]] = {key: {} for key in variants}
    # Twice the rounds of the latency scenario: a block is short, and each one lands
    # its fresh processes on the cores afresh, so a round alone varies by 10% or more.
    for order in rounds({key: v.label for key, v in variants.items()}, 2 * cfg.rounds):
        for key in order:
            block = _timed_block(bench, key, variants[key])
            samples[key] += block[0]
            add_usage(usage[key], block[1])
    base = summarize(samples[BASELINE])
    rows = []
    for key, variant in variants.items():
        stats = summarize(samples[key])
        n = max(1, int(stats["n"]))
        rows.append(
            {
                "variant": key,
                "label": variant.label,
                **stats,
                "p50_ratio": ratio(stats["p50_us"], base["p50_us"]),
                "p99_ratio": ratio(stats["p99_us"], base["p99_us"]),
                "mean_ratio": ratio(stats["mean_us"], base["mean_us"]),
                "caller_cpu_us": 1e6 * usage[key].get("bench", 0.0) / n,
                "service_cpu_us": 1e6 * usage[key].get(key, 0.0) / n,
                "server_cpu_us": 1e6 * usage[key].get("server", 0.0) / n,
                "server_commands": usage[key].get("commands", 0.0) / n,
            }
        )
    result: dict[str, Any] = {"rows": rows, "baseline": BASELINE}
    if skipped:
        result["note"] = f"left out (a package is missing): {', '.join(skipped)}"
    return result
