"""Instructions a blocking caller spends on one request, counted by callgrind.

    python bench/callgrind_call.py [--small 500] [--large 1500] [--warmup 50]

Starts a private server and, in an untraced child process, a service with one ``echo``
action (a plain ``def``, as ``bench/run.py``'s latency target calls). Then runs a plain
script under ``valgrind --tool=callgrind`` twice: it connects a ``DaebusCaller``, makes
``--warmup`` calls, then ``--small`` (or ``--large``) sequential ``send_request`` calls
with ``bench/run.py``'s echo payload. The difference of the two totals divided by the
difference in calls is what one call costs the calling process: encoding and publishing
the request, waiting for and reading its reply, decoding it. Sequential calls take the
caller's own reply connection (from the second call on), so the portal thread does not
take part. Instruction counts do not depend on the machine's load, so two commits
compare in one number each (run it with ``PYTHONPATH`` pointing at another checkout's
``src``). Needs valgrind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

from _common import ECHO_PAYLOAD, instructions_per_unit

SERVICE = "bench-callgrind-call"


def serve(url: str) -> None:
    """The untraced service: answer ``echo`` until terminated."""
    from daebus import Daebus, request

    app = Daebus("callgrind")

    @app.action("echo")
    def echo() -> object:
        return request.payload

    signal.alarm(600)  # never outlive a bench that died
    app.run(service=SERVICE, redis_url=url)


def call(url: str, warmup: int, count: int) -> None:
    """The traced caller: ``warmup`` untimed calls, then ``count`` more, one at a time."""
    from daebus import DaebusCaller

    with DaebusCaller(SERVICE, redis_url=url, timeout=30) as caller:
        for _ in range(warmup):
            caller.send_request("echo", ECHO_PAYLOAD)
        for _ in range(count):
            caller.send_request("echo", ECHO_PAYLOAD)


def _wait_for_service(url: str, child: subprocess.Popen[bytes]) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 30
        while client.pubsub_numsub(SERVICE)[0][1] < 1:
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the service did not start")
            time.sleep(0.05)
    finally:
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--large", type=int, default=1500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--call", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.url)
        return 0
    if args.call is not None:
        call(args.url, args.warmup, args.call)
        return 0
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("valgrind is not installed", file=sys.stderr)
        return 2
    from daebus.server import EmbeddedServer

    os.environ.setdefault("PYTHONHASHSEED", "0")  # the same dict layouts in both runs
    with EmbeddedServer() as server:
        service = subprocess.Popen(
            [sys.executable, __file__, "--serve", "--url", server.url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            _wait_for_service(server.url, service)

            def calling(count: int) -> list[str]:
                return [sys.executable, __file__, "--call", str(count), "--url", server.url,
                        "--warmup", str(args.warmup)]  # fmt: skip

            per_call = instructions_per_unit(valgrind, calling, args.small, args.large)
        finally:
            service.terminate()
            try:
                service.wait(10)
            except subprocess.TimeoutExpired:
                service.kill()
                service.wait()
    print(
        f"Python {sys.version.split()[0]}, DaebusCaller -> def action: "
        f"{per_call / 1000:.1f}k instructions per call"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
