"""Instructions a caller spends routing one reply to its request, counted by callgrind.

    python bench/callgrind_reply.py [--small 2000] [--large 12000]

With many threads sharing a ``DaebusCaller``, its portal thread holds the GIL most of
the time (bench/README.md), and routing each reply is a large part of that:
``AsyncDaebusCaller._on_reply`` decodes it, finds the request it answers and hands it
to the waiting thread's queue. This script feeds ``--small`` and then ``--large``
replies (the reply ``bench/run.py``'s echo service sends, 90 bytes) straight to
``_on_reply`` under ``valgrind --tool=callgrind``, each taken from the queue at once,
and the same loop again with the reply put on the queue undecoded. The difference per
reply between the two is what routing costs; no server, no threads, no wake-ups.
Instruction counts do not depend on the machine's load. Needs valgrind.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import sys

from _common import ECHO_PAYLOAD, callgrind_instructions


def feed(count: int, route: bool) -> None:
    """The traced loop: ``count`` replies, routed by ``_on_reply`` if ``route``."""
    from daebus import encoding
    from daebus.caller import AsyncDaebusCaller
    from daebus.transport import Delivery

    core = AsyncDaebusCaller("bench", redis_url="redis://127.0.0.1:1/0")  # never connects
    replies: queue.SimpleQueue[object] = queue.SimpleQueue()
    channel = core.response_channel
    for n in range(count):
        request_id = f"bench-{n:08d}"
        data = encoding.dumps(
            {
                "status": "success",
                "payload": ECHO_PAYLOAD,
                "request_id": request_id,
                "final": True,
            }
        )
        core.pending[request_id] = replies.put
        delivery = Delivery(channel, data, None)
        if route:
            core._on_reply(delivery)
        else:
            replies.put(delivery)
            core.pending.pop(request_id)
        replies.get_nowait()


def instructions(valgrind: str, count: int, route: bool) -> int:
    """Total instructions of one traced run of :func:`feed`."""
    command = [sys.executable, __file__, "--feed", str(count)] + ["--route"] * route
    return callgrind_instructions(valgrind, command)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=12000)
    parser.add_argument("--feed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--route", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.feed is not None:
        feed(args.feed, args.route)
        return 0
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("valgrind is not installed", file=sys.stderr)
        return 2
    os.environ.setdefault("PYTHONHASHSEED", "0")  # the same dict layouts in every run
    extra = args.large - args.small
    per_reply = {
        route: (
            instructions(valgrind, args.large, route) - instructions(valgrind, args.small, route)
        )
        / extra
        for route in (True, False)
    }
    routing = per_reply[True] - per_reply[False]
    print(
        f"Python {sys.version.split()[0]}: {routing / 1000:.1f}k instructions to route a reply "
        f"({per_reply[True] / 1000:.1f}k with the loop, {per_reply[False] / 1000:.1f}k without)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
