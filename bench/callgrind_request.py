"""Instructions a service spends on one request, counted by callgrind.

    python bench/callgrind_request.py [--kind def|async] [--small 1000] [--large 3000] [--gap 2]

Starts a private server, then runs a service with one ``echo`` action (a plain ``def``,
run in a worker, or ``async def``) under ``valgrind --tool=callgrind`` twice: once for
``--small`` requests, once for ``--large``. A separate, untraced process publishes the
requests one at a time, ``--gap`` milliseconds apart, as sequential callers do, each with
a ``reply_to`` the service answers on. The difference of the two totals divided by the
difference in requests is what one request costs the service: reading it, running the
handler, replying. Instruction counts do not depend on the machine's load, so two commits
compare in one number each. Needs valgrind.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

from _common import instructions_per_unit

SERVICE = "bench-callgrind-request"


def service(url: str, count: int, kind: str) -> None:
    """The traced service: answer ``count`` requests, then stop."""
    from daebus import Daebus, request

    try:
        from daebus.runtime.loop import run
    except ImportError:  # before the runtime became a package
        from daebus._loop import run  # type: ignore[import-not-found,no-redef]

    app = Daebus("callgrind")
    handled = 0
    lock = threading.Lock()
    finished = threading.Event()

    def count_one() -> None:
        nonlocal handled
        with lock:
            handled += 1
            if handled == count:
                finished.set()

    if kind == "def":

        @app.action("echo")
        def echo() -> object:
            count_one()
            return request.payload

    else:

        @app.action("echo")
        async def echo() -> object:
            count_one()
            return request.payload

    def publish_then_stop() -> None:
        _start_publisher(url, count).wait()
        finished.wait()
        app.stop()

    threading.Thread(target=publish_then_stop, daemon=True).start()
    run(app.serve(SERVICE, redis_url=url))


def _start_publisher(url: str, count: int) -> subprocess.Popen[bytes]:
    # A child process: valgrind does not trace it, so its cost is not counted.
    gap = os.environ["CALLGRIND_REQUEST_GAP"]
    return subprocess.Popen(
        [sys.executable, __file__, "--publish", str(count), "--url", url, "--gap", gap]
    )


def publish(url: str, count: int, gap: float) -> None:
    """Wait for the service's subscription, then send ``count`` requests, one at a time."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        while client.pubsub_numsub(SERVICE)[0][1] < 1:
            time.sleep(0.05)
        for n in range(count):
            envelope = {
                "action": "echo",
                "payload": {"n": n},
                "reply_to": "caller:callgrind",
                "request_id": f"r{n}",
                "service": SERVICE,
            }
            client.publish(SERVICE, json.dumps(envelope))
            time.sleep(gap / 1000)
    finally:
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=["def", "async"], default="def")
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=3000)
    parser.add_argument("--gap", type=float, default=2.0, help="ms between requests")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--publish", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        service(args.url, args.serve, args.kind)
        return 0
    if args.publish is not None:
        publish(args.url, args.publish, args.gap)
        return 0
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("valgrind is not installed", file=sys.stderr)
        return 2
    from daebus.server import EmbeddedServer

    os.environ.setdefault("PYTHONHASHSEED", "0")  # the same dict layouts in both runs
    os.environ["CALLGRIND_REQUEST_GAP"] = str(args.gap)
    with EmbeddedServer() as server:

        def serving(count: int) -> list[str]:
            return [sys.executable, __file__, "--serve", str(count), "--url", server.url,
                    "--kind", args.kind]  # fmt: skip

        per_request = instructions_per_unit(valgrind, serving, args.small, args.large)
    print(
        f"Python {sys.version.split()[0]}, {args.kind} action: "
        f"{per_request / 1000:.1f}k instructions per request"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
