"""daebus against a bare redis-py loop, side by side on one server: ``python bench/run.py``.

Options: ``--quick`` (about a minute), ``--smoke`` (every scenario with tiny counts: a
check that the bench runs, not figures), ``--only SCENARIO`` (repeatable or comma-separated),
``--redis-url URL`` (an existing loopback server instead of a private one),
``--json FILE`` (dump every figure). See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import _durable
import _durable_rpc
import _fanout
import _idle
import _report
import _rpc
import _sharing
import _telemetry
import hiredis
import redis
from _procs import Processes, check_loopback
from _setup import FULL, QUICK, SMOKE, Bench

import daebus
from daebus.runtime.loop import loop_name
from daebus.server import EmbeddedServer

SCENARIOS = {
    "latency": _rpc.latency,
    "throughput": _rpc.throughput,
    "fanout": _fanout.fanout,
    "stream": _rpc.stream,
    "idle": _idle.idle,
    "durable": _durable.durable,
    "sharing": _sharing.sharing,
    "faststream": _durable.faststream,
    "durable_request": _durable_rpc.durable_request,
    "telemetry": _telemetry.telemetry,
}

REPO = Path(__file__).resolve().parent.parent


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/run.py",
        description="Benchmark daebus against a bare redis-py request/reply loop.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a short run (about a minute)")
    size.add_argument(
        "--smoke",
        action="store_true",
        help="every scenario with tiny counts: checks the bench runs; its figures mean nothing",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="SCENARIO",
        help=f"run only these scenarios ({', '.join(SCENARIOS)}); repeatable or a,b",
    )
    parser.add_argument(
        "--redis-url", help="use this server (loopback only) instead of a private one"
    )
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    args = parser.parse_args(argv)
    selected = list(SCENARIOS)
    if args.only:
        wanted = [name.strip() for item in args.only for name in item.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in SCENARIOS]
        if unknown:
            parser.error(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
        selected = [name for name in SCENARIOS if name in wanted]
    args.selected = selected
    return args


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "?"
    return done.stdout.strip() or "?"


def _machine(url: str, argv: list[str]) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    try:
        info = client.info("server")
    finally:
        client.close()
    version = info.get("valkey_version") or info.get("redis_version")
    server = f"{info.get('server_name', 'redis')} {version}"
    commit = _git("rev-parse", "--short", "HEAD")
    # PYTHONPATH=DIR/src runs another copy (a snapshot of a commit, say): name it.
    source = Path(daebus.__file__).resolve().parent.parent
    if source != REPO / "src":
        commit += f" (daebus imported from {source})"
    elif _git("status", "--porcelain", "--", "src") not in ("", "?"):
        commit += " (src modified)"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/run.py", *argv]),
        "nproc": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis_py": redis.__version__,
        "hiredis": getattr(hiredis, "__version__", "?"),
        "hiredis_in_use": bool(redis.utils.HIREDIS_AVAILABLE),
        "daebus": daebus.__version__,
        "event_loop": loop_name(),
        "commit": commit,
        "server": server,
        "url": url,
    }


def _header(machine: dict[str, Any], size: str) -> str:
    return "\n".join(
        [
            f"daebus bench, {machine['date']}: {size} run",
            f"  {machine['command']}",
            f"  nproc {machine['nproc']}, Python {machine['python']}, {machine['platform']}",
            f"  redis-py {machine['redis_py']}, hiredis {machine['hiredis']}"
            f" (in use: {machine['hiredis_in_use']}), daebus {machine['daebus']}"
            f" at {machine['commit']}",
            f"  event loop: {machine['event_loop']} (services and callers; $DAEBUS_EVENT_LOOP)",
            f"  server: {machine['server']} at {machine['url']}",
        ]
    )


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parse(argv)
    size = "smoke" if args.smoke else "quick" if args.quick else "full"
    config = {"smoke": SMOKE, "quick": QUICK, "full": FULL}[size]
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    results: dict[str, dict[str, Any]] = {}
    machine: dict[str, Any] = {}
    failed = False
    server: EmbeddedServer | None = None
    try:
        if args.redis_url:
            check_loopback(args.redis_url)
            url = args.redis_url
        else:
            server = EmbeddedServer().start()
            url = server.url
        os.environ["DAEBUS_REDIS_URL"] = url  # broadcast.send from this plain script
        machine = _machine(url, argv)
        print(_header(machine, size), flush=True)
        # Children end by themselves long after any sane run would have.
        with Processes(url, ttl=1800 if size == "full" else 600) as procs:
            bench = Bench(url, procs, config)
            for name in args.selected:
                print(f"\n[{name}] running...", flush=True)
                began = time.monotonic()
                try:
                    results[name] = SCENARIOS[name](bench)
                except Exception as exc:
                    failed = True
                    traceback.print_exc()
                    results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                results[name]["elapsed_s"] = time.monotonic() - began
                print(_report.render(name, results[name]), flush=True)
        failed_calls = [
            row["label"]
            for result in results.values()
            for row in result.get("rows", [])
            if row.get("errors")
        ]
        if failed_calls:
            failed = True
            print(f"\nsome calls failed: {', '.join(sorted(set(failed_calls)))}")
        if procs.complained:
            failed = True
            print("\nchild processes logged errors or warnings (above, 'child log:')")
        goals = _report.targets(results)
        print()
        if size == "smoke":
            print("(a smoke run: too few calls and messages for these figures to mean anything)")
        print(_report.render_targets(goals))
    except KeyboardInterrupt:
        print("\ninterrupted; every child process was stopped", file=sys.stderr)
        return 130
    finally:
        if server is not None:
            server.stop()
    if args.json:
        document = {
            "machine": machine,
            "config": config.to_dict(),
            "results": results,
            "targets": goals,
        }
        Path(args.json).write_text(json.dumps(document, indent=2, default=str) + "\n")
        print(f"\nwrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
