"""Instructions per broadcast in a listener service, counted by callgrind.

    python bench/callgrind_listener.py [--small 2000] [--large 7000]

Starts a private server, then runs a service with one ``async def`` listener under
``valgrind --tool=callgrind`` twice: once for ``--small`` messages, once for ``--large``.
A separate, untraced process publishes them in pipelines of 1,000, the way
``broadcast.send_many`` does. The difference of the two totals divided by the
difference in messages is what one message costs the service, socket read included,
start-up and shutdown excluded. Instruction counts do not depend on the machine's load,
so two commits (or two Pythons) compare in one number each. Needs valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CHANNEL = "bench-callgrind"
BODY = b'{"run": "callgrind", "seq": 12345}'
BATCH = 1000


def listener(url: str, count: int) -> None:
    """The traced service: count ``count`` messages, then stop."""
    from daebus import Daebus

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
        # A child process: valgrind does not trace it, so its cost is not counted.
        subprocess.run(
            [sys.executable, __file__, "--publish", str(count), "--url", url], check=True
        )
        finished.wait()
        app.stop()

    threading.Thread(target=publish_then_stop, daemon=True).start()
    asyncio.run(app.serve("callgrind", redis_url=url))


def publish(url: str, count: int) -> None:
    """Wait for the listener's subscription, then publish ``count`` messages."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        while client.pubsub_numsub(CHANNEL)[0][1] < 1:
            time.sleep(0.05)
        for start in range(0, count, BATCH):
            with client.pipeline(transaction=False) as pipe:
                for _ in range(min(BATCH, count - start)):
                    pipe.publish(CHANNEL, BODY)
                pipe.execute()
    finally:
        client.close()


def instructions(valgrind: str, url: str, count: int) -> int:
    """Total instructions of one traced run of the listener."""
    with tempfile.TemporaryDirectory() as scratch:
        out = subprocess.run(
            [
                valgrind,
                "--tool=callgrind",
                f"--callgrind-out-file={Path(scratch) / 'callgrind.out'}",
                sys.executable,
                __file__,
                "--listen",
                str(count),
                "--url",
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    found = re.search(r"Collected : ([\d,]+)", out.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{out.stderr}")
    return int(found.group(1).replace(",", ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=7000)
    parser.add_argument("--listen", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--publish", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.listen is not None:
        listener(args.url, args.listen)
        return 0
    if args.publish is not None:
        publish(args.url, args.publish)
        return 0
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("valgrind is not installed", file=sys.stderr)
        return 2
    from daebus.server import EmbeddedServer

    os.environ.setdefault("PYTHONHASHSEED", "0")  # the same dict layouts in both runs
    with EmbeddedServer() as server:
        small = instructions(valgrind, server.url, args.small)
        large = instructions(valgrind, server.url, args.large)
    per_message = (large - small) / (args.large - args.small)
    print(f"Python {sys.version.split()[0]}: {per_message / 1000:.1f}k instructions per message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
