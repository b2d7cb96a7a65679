"""The bench's child processes: ``python bench/_services.py ROLE --url URL ...``.

Roles:
    daebus-service   a Daebus app: actions ``echo`` (def), ``echo_async`` (async def),
                     ``stream`` / ``stream_async`` (100 parts then a final reply),
                     ``report``; with ``--listen CH`` also a listener tallying broadcasts
                     (``async def``, or ``def`` with ``--sync-listener``); with
                     ``--durable CH`` a durable listener of CH tallying its messages
                     (``async def``; its group is the service). With ``--tracing``,
                     traced (``app.enable_tracing``) with an OpenTelemetry SDK
                     TracerProvider that exports nowhere: what the spans themselves cost.
                     With ``--metrics-port N``, Prometheus metrics on, served on port N.
    daebus-worker    a Daebus app with one worker (``max_workers=1``) whose handlers
                     sleep 5 ms: the action ``work`` and a durable listener of
                     ``--durable CH``; a plain listener of ``--reports CH`` answers
                     ``{"report": run, "reply_to": channel}`` with this instance's tally.
    daebus-caller    a DaebusCaller, connected, one call made, then idle.
    bare-responder   the bare redis-py responder (see _baseline.py).
    bare-listener    the bare redis-py broadcast listener.
    bare-stream-consumer  the bare redis-py stream consumer (see _stream_baseline.py).
    bare-caller      a bare caller, one call made, then idle.

Each ends by itself after ``--ttl`` seconds (SIGALRM's default action: no thread, no
timer wake-ups before then).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from _common import ECHO_PAYLOAD, STREAM_PARTS, WORK_SECONDS, Tally


def daebus_service(
    url: str,
    service: str,
    listen: str | None,
    sync_listener: bool,
    durable: str | None,
    tracing: bool = False,
    metrics_port: int | None = None,
) -> None:
    from daebus import Daebus, request, response

    app = Daebus("bench")
    tally = Tally()
    if tracing:
        from opentelemetry.sdk.trace import TracerProvider

        # No span processor: each span is made, recorded and ended, then dropped.
        app.enable_tracing(TracerProvider())
    if metrics_port is not None:
        app.enable_metrics(port=metrics_port)

    @app.action("echo")
    def echo() -> Any:
        return request.payload

    @app.action("echo_async")
    async def echo_async() -> Any:
        return request.payload

    @app.action("stream")
    def stream() -> None:
        parts = int(request.payload.get("parts", STREAM_PARTS))
        for part in range(parts):
            response.send({"part": part}, final=False)
        response.send({"done": True})

    @app.action("stream_async")
    async def stream_async() -> None:
        parts = int(request.payload.get("parts", STREAM_PARTS))
        for part in range(parts):
            response.send({"part": part}, final=False)  # published in order, not awaited
        response.send({"done": True})
        await response.flush()

    @app.action("report")
    def report() -> Any:
        return {**tally.report(request.payload.get("run")), "pid": os.getpid()}

    if listen is not None:
        if sync_listener:
            lock = threading.Lock()

            @app.listen(listen)
            def on_message(data: Any) -> None:
                with lock:
                    tally.add(data)

        else:

            @app.listen(listen)
            async def on_message_async(data: Any) -> None:
                tally.add(data)

    if durable is not None:

        @app.listen(durable, durable=True)
        async def on_durable(data: Any) -> None:
            tally.add(data)

    app.run(service=service, redis_url=url)


def daebus_worker(url: str, service: str, durable: str, reports: str) -> None:
    """One instance of a service whose handlers each take 5 ms, one at a time."""
    from daebus import Daebus, broadcast

    app = Daebus("bench", max_workers=1)
    tally = Tally()
    pid = os.getpid()

    @app.action("work")
    def work() -> Any:
        time.sleep(WORK_SECONDS)
        return pid

    @app.listen(durable, durable=True)
    def on_message(data: Any) -> None:
        time.sleep(WORK_SECONDS)
        tally.add(data)  # one worker: one handler at a time

    @app.listen(reports)
    async def on_report(data: Any) -> None:
        sent = broadcast.send(data["reply_to"], {**tally.report(data["report"]), "pid": pid})
        if inspect.isawaitable(sent):
            await sent

    app.run(service=service, redis_url=url)


def daebus_caller(url: str, target: str, ready: str) -> None:
    from daebus import DaebusCaller

    caller = DaebusCaller(target, redis_url=url).connect()
    caller.send_request("echo", ECHO_PAYLOAD)
    Path(ready).write_text("ready\n")
    threading.Event().wait()  # idle until killed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role")
    parser.add_argument("--url", required=True)
    parser.add_argument("--ttl", type=int, required=True)
    parser.add_argument("--name", help="service name or channel")
    parser.add_argument("--listen")
    parser.add_argument("--sync-listener", action="store_true")
    parser.add_argument("--durable", help="channel of a durable listener")
    parser.add_argument("--reports", help="channel on which a worker answers reports")
    parser.add_argument("--group", help="a bare stream consumer's group")
    parser.add_argument("--count", type=int, help="entries a bare stream consumer reads at most")
    parser.add_argument("--ack-each", action="store_true", help="one XACK per entry")
    parser.add_argument("--ready", help="file to create once ready")
    parser.add_argument(
        "--tracing", action="store_true", help="daebus-service: trace with OpenTelemetry"
    )
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    args = parser.parse_args()
    signal.alarm(max(1, args.ttl))

    if args.role == "daebus-service":
        daebus_service(
            args.url,
            args.name,
            args.listen,
            args.sync_listener,
            args.durable,
            args.tracing,
            args.metrics_port,
        )
    elif args.role == "daebus-worker":
        daebus_worker(args.url, args.name, args.durable, args.reports)
    elif args.role == "daebus-caller":
        daebus_caller(args.url, args.name, args.ready)
    else:
        import _baseline

        if args.role == "bare-responder":
            _baseline.responder_main(args.url, args.name)
        elif args.role == "bare-listener":
            _baseline.listener_main(args.url, args.name)
        elif args.role == "bare-stream-consumer":
            import _stream_baseline

            _stream_baseline.consumer_main(
                args.url,
                args.name,
                args.group,
                args.count or _stream_baseline.READ_COUNT,
                args.ack_each,
            )
        elif args.role == "bare-caller":
            _baseline.idle_caller_main(args.url, args.name, args.ready)
        else:
            parser.error(f"unknown role {args.role!r}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
