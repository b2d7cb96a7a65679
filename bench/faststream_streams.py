"""FastStream's Redis Streams doing the bench's durable fan-out, for a ratio against daebus.

Run by the python of a virtualenv that has FastStream (``pip install 'faststream[redis]'``),
outside this repository; ``bench/run.py --only faststream`` starts it, see bench/README.md.
It needs nothing of daebus. Two commands:

    consume --url URL --stream KEY --group G --reports CHANNEL --ttl S
        a FastStream app with one ``StreamSub(KEY, group=G, consumer=...)`` subscriber
        (its defaults otherwise: messages one at a time, each acknowledged with XACK once
        its handler returns) that tallies ``{"run", "seq"}`` messages; a pub/sub
        subscriber on CHANNEL answers ``{"report": run, "reply_to": channel}`` with the
        tally, published as plain JSON by a redis-py client of its own.
    produce --url URL --stream KEY --run ID --count N --batch B --maxlen M
        ``broker.publish(message, stream=KEY, maxlen=M, pipeline=pipe)`` for N messages,
        B per pipeline (FastStream's way to batch stream publishing); prints one JSON line:
        ``{"began": monotonic, "ended": monotonic, "cpu": seconds}``, timed after connecting.

FastStream logs every message it handles at INFO by default; the broker's ``log_level``
is set to DEBUG so that these lines are not written, as daebus writes none.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import time
from typing import Any

from _common import Tally

# Imported by name: FastStream is in another virtualenv, not in the project's (nor typed there).
_faststream_redis: Any = importlib.import_module("faststream.redis")
RedisBroker, StreamSub = _faststream_redis.RedisBroker, _faststream_redis.StreamSub


async def consume(url: str, stream: str, group: str, reports: str) -> None:
    import redis.asyncio

    broker = RedisBroker(url, log_level=logging.DEBUG)
    replies = redis.asyncio.Redis.from_url(url)
    tally = Tally()

    async def on_message(body: dict[str, Any]) -> None:
        tally.add(body)

    async def on_report(body: dict[str, Any]) -> None:
        report = {**tally.report(body["report"]), "pid": os.getpid()}
        await replies.publish(body["reply_to"], json.dumps(report))

    # As the decorators would: @broker.subscriber(stream=StreamSub(...)), @broker.subscriber(...)
    broker.subscriber(stream=StreamSub(stream, group=group, consumer=f"fs-{os.getpid()}"))(
        on_message
    )
    broker.subscriber(reports)(on_report)

    async with broker:
        await broker.start()
        await asyncio.Event().wait()  # until killed


async def produce(url: str, stream: str, run: str, count: int, batch: int, maxlen: int) -> None:
    broker = RedisBroker(url, log_level=logging.DEBUG)
    async with broker:
        await broker.connect()
        client = broker._connection  # the redis-py client, as FastStream's Redis annotation has it
        await client.ping()
        began, cpu = time.monotonic(), time.process_time()
        for start in range(0, count, batch):
            async with client.pipeline(transaction=False) as pipe:
                for seq in range(start, min(count, start + batch)):
                    await broker.publish(
                        {"run": run, "seq": seq}, stream=stream, maxlen=maxlen, pipeline=pipe
                    )
                await pipe.execute()
        ended = time.monotonic()
    figures = {"began": began, "ended": ended, "cpu": time.process_time() - cpu}
    print(json.dumps(figures), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["consume", "produce"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--group")
    parser.add_argument("--reports")
    parser.add_argument("--ttl", type=int, default=600)
    parser.add_argument("--run")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--maxlen", type=int, default=10_000)
    args = parser.parse_args()
    signal.alarm(max(1, args.ttl))  # ends by itself, as the bench's other children do
    if args.command == "consume":
        asyncio.run(consume(args.url, args.stream, args.group, args.reports))
    else:
        asyncio.run(produce(args.url, args.stream, args.run, args.count, args.batch, args.maxlen))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
