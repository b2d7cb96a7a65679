"""Tables of figures and ratios, and the targets (bench/README.md) marked met or not met."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

#: Idle "CPU ≈ 0": at most this share of one core over the window.
IDLE_CPU_PERCENT = 0.1
#: "No periodic wake-ups more often than once a second".
IDLE_WAKEUPS_PER_S = 1.0
IDLE_RSS_MB = 40.0
BATCH_RATE = 100_000


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "  ") -> str:
    """A plain text table; the first column is left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        return indent + "  ".join(parts).rstrip()

    rule = indent + "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


# -- per-scenario tables ---------------------------------------------------------------
def render_latency(result: dict[str, Any]) -> str:
    n = result["rows"][0]["n"]
    head = f"1. Sequential RPC latency ({n} timed calls per variant, one at a time)"
    return _latency_tables(result, head, ["p50 vs bare", "p99 vs bare", "mean"])


def _latency_tables(result: dict[str, Any], head: str, ratio_headers: list[str]) -> str:
    """Percentiles of sequential calls with their ratios, then where their CPU went."""
    rows = [
        [
            row["label"],
            _num(row["p50_us"], 1),
            _num(row["p99_us"], 1),
            _num(row["mean_us"], 1),
            _x(row["p50_ratio"]),
            _x(row["p99_ratio"]),
            _x(row["mean_ratio"]),
        ]
        for row in result["rows"]
    ]
    headers = ["variant", "p50 us", "p99 us", "mean us", *ratio_headers]
    return "\n".join([head, table(headers, rows), "", _cpu_table(result["rows"], "call")])


def _cpu_table(rows: list[dict[str, Any]], per: str) -> str:
    cells = [
        [
            row["label"],
            _num(row.get("caller_cpu_us"), 1),
            _num(row.get("service_cpu_us"), 1),
            _num(row.get("server_cpu_us"), 1),
            _num(row.get("server_commands"), 2),
        ]
        for row in rows
    ]
    head = (
        f"  Where the time goes, per {per}: CPU us of the caller (the bench process),"
        " of the service process, of the server; server commands"
    )
    return head + "\n" + table(["variant", "caller", "service", "server", "commands"], cells)


def render_throughput(result: dict[str, Any]) -> str:
    rows = [
        [
            row["label"],
            row["callers"],
            _num(row["calls_per_s"]),
            _x(row["ratio"]),
            _num(row.get("caller_cpu_us"), 1),
            _num(row.get("service_cpu_us"), 1),
            _num(row.get("server_cpu_us"), 1),
            len(row["errors"]) or "",
        ]
        for row in result["rows"]
    ]
    head = (
        "2. Throughput, concurrent callers sharing one caller object"
        " (CPU us per call of caller, service, server)"
    )
    headers = ["variant", "callers", "calls/s", "vs bare", "caller", "service", "server", "errors"]
    return head + "\n" + table(headers, rows)


def render_fanout(result: dict[str, Any]) -> str:
    rows = [
        [
            row["label"],
            row["listeners"],
            _num(row["published"]),
            _num(row["published_per_s"]),
            f"{_x(row['ratio'])} {row['versus'] or ''}".rstrip() if row["ratio"] else "-",
            _num(row["delivered_per_s_min"]),
            row["lost"],
            row["out_of_order"],
            _num(row.get("publisher_cpu_us"), 1),
            _num(row.get("listener_cpu_us"), 1),
            _num(row.get("server_cpu_us"), 1),
        ]
        for row in result["rows"]
    ]
    head = (
        "3. Broadcast fan-out of small messages (delivered/s: the slowest listener;"
        " CPU us per message of the publisher, of one listener, of the server)"
    )
    headers = [
        "variant",
        "listeners",
        "messages",
        "published/s",
        "vs",
        "delivered/s",
        "lost",
        "out of order",
        "publisher",
        "listener",
        "server",
    ]
    return head + "\n" + table(headers, rows)


def render_stream(result: dict[str, Any]) -> str:
    parts = result["parts"] + 1
    rows = [
        [
            row["label"],
            _num(row["p50_us"] / 1000, 2),
            _num(row["p99_us"] / 1000, 2),
            _num(row["mean_us"] / 1000, 2),
            _num(row["p50_us"] / parts, 1),
            _x(row["p50_ratio"]),
            _x(row["mean_ratio"]),
        ]
        for row in result["rows"]
    ]
    n = result["rows"][0]["n"]
    head = f"4. A {result['parts']}-part streamed reply, whole stream ({n} timed per variant)"
    headers = ["variant", "p50 ms", "p99 ms", "mean ms", "us/part", "p50 vs bare", "mean"]
    return "\n".join([head, table(headers, rows), "", _cpu_table(result["rows"], "stream")])


def render_idle(result: dict[str, Any]) -> str:
    rows = [
        [
            row["process"],
            _num(row["cpu_s"] * 1000, 0),
            _num(row["cpu_percent"], 3),
            row["wakeups"],
            _num(row["wakeups_per_s"], 2),
            row["threads"],
            _num(row["rss_mb"], 1),
        ]
        for row in result["rows"]
    ]
    window = result["rows"][0]["window_s"] if result["rows"] else 0
    head = f"5. Idle for {window:.0f} s"
    headers = ["process", "CPU ms", "CPU %", "wake-ups", "wake-ups/s", "threads", "RSS MB"]
    return head + "\n" + table(headers, rows)


def render_durable(result: dict[str, Any], title: str = "6. Durable fan-out") -> str:
    rows = [
        [
            row["label"],
            row["services"],
            _num(row["messages"]),
            _num(row["published_per_s"]),
            _num(row["delivered_all_per_s"]),
            " / ".join(_num(rate) for rate in row["delivered_per_s"]),
            f"{_x(row['ratio'])} {row['versus']}" if row["ratio"] else "-",
            row["lost"],
            row["out_of_order"],
            _num(row["producer_cpu_us"], 1),
            _num(row["consumer_cpu_us"], 1),
            _num(row["server_cpu_us"], 1),
        ]
        for row in result["rows"]
    ]
    head = (
        f"{title}: each service its own consumer group (delivered/s: in all, then per"
        " service; ratio: delivered/s in all; CPU us per message of the producer,"
        " of one consumer, of the server)"
    )
    headers = [
        "variant",
        "services",
        "messages",
        "published/s",
        "delivered/s",
        "per service",
        "vs",
        "lost",
        "out of order",
        "producer",
        "consumer",
        "server",
    ]
    return head + "\n" + table(headers, rows)


def render_faststream(result: dict[str, Any]) -> str:
    return render_durable(result, "8. Durable fan-out, daebus against FastStream")


def render_sharing(result: dict[str, Any]) -> str:
    rows = [
        [
            row["label"],
            row["instances"],
            _num(row["done"]),
            _num(row["per_s"]),
            _num(row["ideal_per_s"]),
            _x(row["ratio"]),
            "; ".join("/".join(str(n) for n in shares) for shares in row["shares"]),
            row["lost"] if row["mode"] != "pubsub" else "",
            len(row["errors"]) or "",
            _num(row.get("instances_cpu_us"), 0),
            _num(row.get("bench_cpu_us"), 0),
            _num(row.get("server_cpu_us"), 0),
        ]
        for row in result["rows"]
    ]
    head = (
        f"7. Load sharing: handlers of {result['work_ms']:.0f} ms, max_workers=1, N instances"
        f" ({result['callers']} calling threads; ideal: N x one instance's rate;"
        " shares: per instance, per round; CPU us per call or message of all the instances,"
        " of the caller or sender, of the server)"
    )
    headers = ["mode", "instances", "done", "per s", "ideal", "ratio", "shares", "lost", "errors"]
    headers += ["instances", "caller", "server"]
    return head + "\n" + table(headers, rows)


def render_durable_request(result: dict[str, Any]) -> str:
    n = result["rows"][0]["n"]
    head = f"9. Durable requests, sequential ({n} timed calls per variant, one at a time)"
    return _latency_tables(result, head, ["p50 vs pub/sub", "p99", "mean"])


def render_telemetry(result: dict[str, Any]) -> str:
    n = result["rows"][0]["n"]
    head = f"10. Telemetry's cost, sequential RPC ({n} timed calls per variant, one at a time)"
    text = _latency_tables(result, head, ["p50 vs off", "p99", "mean"])
    return text + (f"\n  {result['note']}" if result.get("note") else "")


RENDERERS = {
    "latency": render_latency,
    "throughput": render_throughput,
    "fanout": render_fanout,
    "stream": render_stream,
    "idle": render_idle,
    "durable": render_durable,
    "sharing": render_sharing,
    "faststream": render_faststream,
    "durable_request": render_durable_request,
    "telemetry": render_telemetry,
}


def render(name: str, result: dict[str, Any]) -> str:
    if "error" in result:
        return f"{name}: FAILED: {result['error']}"
    if "skipped" in result:
        return f"{name}: skipped: {result['skipped']}"
    return RENDERERS[name](result)


# -- targets ---------------------------------------------------------------------------
def _row(result: dict[str, Any] | None, **match: Any) -> dict[str, Any] | None:
    if not result or "rows" not in result:
        return None
    rows: list[dict[str, Any]] = result["rows"]
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def _target(name: str, figure: str, ratio: float | None, goal: str, met: bool) -> dict[str, Any]:
    return {"target": name, "figure": figure, "ratio": ratio, "goal": goal, "met": met}


def targets(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    latency = results.get("latency")
    daebus, bare = _row(latency, variant="daebus"), _row(latency, variant="bare")
    if daebus and bare:
        out.append(
            _target(
                "sequential RPC p50 (DaebusCaller -> def action)",
                f"{daebus['p50_us']:.0f} us vs {bare['p50_us']:.0f} us bare",
                daebus["p50_ratio"],
                "<= 1.0x",
                daebus["p50_ratio"] is not None and daebus["p50_ratio"] <= 1.0,
            )
        )
    throughput = results.get("throughput")
    daebus = _row(throughput, variant="daebus", callers=32)
    bare = _row(throughput, variant="bare", callers=32)
    own = _row(throughput, variant="bare_per_thread", callers=32)
    if daebus and bare:
        # For reference: against 32 bare callers of their own rather than one shared.
        versus_own = (
            f" ({daebus['calls_per_s'] / own['calls_per_s']:.2f}x a bare caller per thread)"
            if own and own["calls_per_s"]
            else ""
        )
        out.append(
            _target(
                "32 callers sharing a DaebusCaller: calls/s",
                f"{daebus['calls_per_s']:,.0f}/s vs {bare['calls_per_s']:,.0f}/s bare" + versus_own,
                daebus["ratio"],
                ">= 2.5x",
                daebus["ratio"] is not None and daebus["ratio"] >= 2.5 and not daebus["errors"],
            )
        )
    fanout = results.get("fanout")
    daebus = _row(fanout, variant="daebus_send", listeners=4)
    bare = _row(fanout, variant="bare", listeners=4)
    if daebus and bare:
        out.append(
            _target(
                "fan-out to 4 listeners: published/s, lost (broadcast.send)",
                f"{daebus['published_per_s']:,.0f}/s vs {bare['published_per_s']:,.0f}/s bare,"
                f" {daebus['lost']} lost",
                daebus["ratio"],
                ">= 1.0x, 0 lost",
                daebus["ratio"] is not None and daebus["ratio"] >= 1.0 and daebus["lost"] == 0,
            )
        )
    batch = _row(fanout, variant="daebus_send_many", listeners=1)
    if batch:
        out.append(
            _target(
                "batch API (send_many) to 1 listener",
                f"{batch['published_per_s']:,.0f}/s published,"
                f" {batch['delivered_per_s_min']:,.0f}/s delivered, {batch['lost']} lost",
                None,
                f">= {BATCH_RATE:,}/s both, 0 lost",
                batch["published_per_s"] >= BATCH_RATE
                and batch["delivered_per_s_min"] >= BATCH_RATE
                and batch["lost"] == 0,
            )
        )
    stream = results.get("stream")
    daebus, bare = _row(stream, variant="daebus"), _row(stream, variant="bare")
    if daebus and bare:
        out.append(
            _target(
                "100-part streamed reply, p50 (DaebusCaller.stream)",
                f"{daebus['p50_us'] / 1000:.2f} ms vs {bare['p50_us'] / 1000:.2f} ms bare",
                daebus["p50_ratio"],
                "<= 1.0x",
                daebus["p50_ratio"] is not None and daebus["p50_ratio"] <= 1.0,
            )
        )
    idle = results.get("idle")
    for process in ("daebus service", "daebus caller"):
        row = _row(idle, process=process)
        if row:
            out.append(
                _target(
                    f"idle {process}: CPU, wake-ups, RSS",
                    f"{row['cpu_s'] * 1000:.0f} ms CPU in {row['window_s']:.0f} s,"
                    f" {row['wakeups_per_s']:.2f} wake-ups/s, {row['rss_mb']:.1f} MB",
                    None,
                    f"CPU <= {IDLE_CPU_PERCENT}%, <= {IDLE_WAKEUPS_PER_S:.0f}/s,"
                    f" <= {IDLE_RSS_MB:.0f} MB",
                    row["cpu_percent"] <= IDLE_CPU_PERCENT
                    and row["wakeups_per_s"] <= IDLE_WAKEUPS_PER_S
                    and row["rss_mb"] <= IDLE_RSS_MB,
                )
            )
    telemetry = results.get("telemetry")
    on, off = _row(telemetry, variant="metrics"), _row(telemetry, variant="off")
    if on and off:
        out.append(
            _target(
                "RPC p50 with metrics on (served) vs off",
                f"{on['p50_us']:.0f} us vs {off['p50_us']:.0f} us off",
                on["p50_ratio"],
                "<= 1.1x",
                on["p50_ratio"] is not None and on["p50_ratio"] <= 1.1,
            )
        )
    return out + durable_targets(results)


def durable_targets(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Durable fan-out against the bare stream loop; load sharing against one instance."""
    out = []
    for services in (1, 4):
        daebus = _row(results.get("durable"), variant="daebus", services=services)
        bare = _row(results.get("durable"), variant="bare", services=services)
        if daebus and bare:
            out.append(
                _target(
                    f"durable fan-out to {services} service(s): delivered/s in all, lost",
                    f"{daebus['delivered_all_per_s']:,.0f}/s vs"
                    f" {bare['delivered_all_per_s']:,.0f}/s bare, {daebus['lost']} lost",
                    daebus["ratio"],
                    ">= 1.0x, 0 lost",
                    daebus["ratio"] is not None and daebus["ratio"] >= 1.0 and daebus["lost"] == 0,
                )
            )
    requests = results.get("durable_request")
    durable, pubsub = _row(requests, variant="durable"), _row(requests, variant="pubsub")
    if durable and pubsub:
        out.append(
            _target(
                "durable request p50 (send_request(durable=True))",
                f"{durable['p50_us']:.0f} us vs {pubsub['p50_us']:.0f} us pub/sub",
                durable["p50_ratio"],
                "<= 1.5x",
                durable["p50_ratio"] is not None and durable["p50_ratio"] <= 1.5,
            )
        )
    sharing = results.get("sharing")
    for row in sharing.get("rows", []) if sharing else []:
        if row["instances"] == 1:
            continue
        out.append(
            _target(
                f"load sharing, {row['mode']}, {row['instances']} instances: rate",
                f"{row['per_s']:,.0f}/s vs {row['ideal_per_s']:,.0f}/s ideal,"
                f" {row['lost']} lost, {len(row['errors'])} errors",
                row["ratio"],
                ">= 0.9x N x one instance's",
                row["ratio"] is not None
                and row["ratio"] >= 0.9
                and not row["lost"]
                and not row["errors"],
            )
        )
    return out


def render_targets(rows: list[dict[str, Any]]) -> str:
    cells = [
        [t["target"], t["figure"], _x(t["ratio"]), t["goal"], "met" if t["met"] else "NOT MET"]
        for t in rows
    ]
    return "Targets\n" + table(["target", "figure", "ratio", "goal", "status"], cells)
