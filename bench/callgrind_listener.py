"""Instructions per broadcast in a listener service, counted by callgrind.

    python bench/callgrind_listener.py [--small 2000] [--large 7000] [--lone] [--bare]

Starts a private server, then runs a service with one ``async def`` listener under
``valgrind --tool=callgrind`` twice: once for ``--small`` messages, once for ``--large``.
A separate, untraced process publishes them in pipelines of 1,000, the way
``broadcast.send_many`` does. The difference of the two totals divided by the
difference in messages is what one message costs the service, socket read included,
start-up and shutdown excluded. Instruction counts do not depend on the machine's load,
so two commits (or two Pythons) compare in one number each. Needs valgrind.

The service runs on the loop ``app.run`` would use: uvloop where it is installed, unless
``$DAEBUS_EVENT_LOOP=asyncio``.

``--lone`` publishes one message at a time, ``--gap`` milliseconds apart, so that each
read from the socket holds one message: the cost of a wake-up per message, as when a
``broadcast.send()`` loop publishes. ``--bare`` traces the bench's bare redis-py
subscriber (``pubsub.listen()`` and ``json.loads``) instead of daebus, for the ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time

from _common import callgrind_instructions, pubsub_of

CHANNEL = "bench-callgrind"
BODY = b'{"run": "callgrind", "seq": 12345}'
BATCH = 1000


def listener(url: str, count: int, lone_gap: float | None) -> None:
    """The traced service: count ``count`` messages, then stop."""
    from daebus import Daebus
    from daebus.runtime.loop import run

    app = Daebus("callgrind")
    seen = 0
    finished = threading.Event()

    @app.listen(CHANNEL)
    async def on_message(data: object) -> None:
        nonlocal seen
        seen += 1
        if seen == count:
            finished.set()

    def publish_then_stop() -> None:
        _start_publisher(url, count, lone_gap).wait()
        finished.wait()
        app.stop()

    threading.Thread(target=publish_then_stop, daemon=True).start()
    run(app.serve("callgrind", redis_url=url))  # as app.run does: on uvloop if installed


def bare_listener(url: str, count: int, lone_gap: float | None) -> None:
    """The bare subscriber of ``bench/_baseline.py``, traced instead of daebus."""
    import json

    import redis

    client = redis.Redis.from_url(url)
    pubsub = pubsub_of(client)
    pubsub.subscribe(CHANNEL)
    publisher = _start_publisher(url, count, lone_gap)
    seen = 0
    for message in pubsub.listen():
        if message["type"] == "message":
            json.loads(message["data"])
            seen += 1
            if seen == count:
                break
    publisher.wait()
    pubsub.close()
    client.close()


def _start_publisher(url: str, count: int, lone_gap: float | None) -> subprocess.Popen[bytes]:
    # A child process: valgrind does not trace it, so its cost is not counted.
    command = [sys.executable, __file__, "--publish", str(count), "--url", url]
    if lone_gap is not None:
        command += ["--lone", "--gap", str(lone_gap)]
    return subprocess.Popen(command)


def publish(url: str, count: int, lone_gap: float | None) -> None:
    """Wait for the listener's subscription, then publish ``count`` messages.

    In pipelines of :data:`BATCH`, or one at a time ``lone_gap`` milliseconds apart.
    """
    import redis

    client = redis.Redis.from_url(url)
    try:
        while client.pubsub_numsub(CHANNEL)[0][1] < 1:
            time.sleep(0.05)
        if lone_gap is not None:
            for _ in range(count):
                client.publish(CHANNEL, BODY)
                time.sleep(lone_gap / 1000)
            return
        for start in range(0, count, BATCH):
            with client.pipeline(transaction=False) as pipe:
                for _ in range(min(BATCH, count - start)):
                    pipe.publish(CHANNEL, BODY)
                pipe.execute()
    finally:
        client.close()


def instructions(valgrind: str, url: str, count: int, options: list[str]) -> int:
    """Total instructions of one traced run of the listener."""
    command = [sys.executable, __file__, "--listen", str(count), "--url", url, *options]
    return callgrind_instructions(valgrind, command)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=7000)
    parser.add_argument("--lone", action="store_true", help="one message per read")
    parser.add_argument("--gap", type=float, default=5.0, help="ms between lone messages")
    parser.add_argument("--bare", action="store_true", help="trace the bare subscriber")
    parser.add_argument("--listen", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--publish", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    lone_gap = args.gap if args.lone else None
    if args.listen is not None:
        (bare_listener if args.bare else listener)(args.url, args.listen, lone_gap)
        return 0
    if args.publish is not None:
        publish(args.url, args.publish, lone_gap)
        return 0
    options = ["--bare"] * args.bare + ["--lone", "--gap", str(args.gap)] * args.lone
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("valgrind is not installed", file=sys.stderr)
        return 2
    from daebus.server import EmbeddedServer

    os.environ.setdefault("PYTHONHASHSEED", "0")  # the same dict layouts in both runs
    with EmbeddedServer() as server:
        small = instructions(valgrind, server.url, args.small, options)
        large = instructions(valgrind, server.url, args.large, options)
    per_message = (large - small) / (args.large - args.small)
    from daebus.runtime.loop import loop_name

    what = "bare subscriber" if args.bare else f"daebus on {loop_name()}"
    what += ", lone messages" * args.lone
    print(
        f"Python {sys.version.split()[0]}, {what}: "
        f"{per_message / 1000:.1f}k instructions per message"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
