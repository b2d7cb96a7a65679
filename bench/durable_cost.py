"""What one durable message costs a consumer, and a producer: CPU and server commands.

    python bench/durable_cost.py [--messages 50000] [--consumer daebus|bare|bare-ack-each]
    python bench/durable_cost.py --producer        # broadcast.send_many(durable=True) alone

Consumer: starts a private server and one consumer process (the bench's daebus service
with a durable ``async def`` listener, or the bare redis-py consumer of
``_stream_baseline.py``), appends ``--messages`` entries with the bare pipelined
producer, waits until the group has acknowledged them all, and prints the consumer's
CPU per message, messages per second (from the first append to the last
acknowledgement) and, from the server's ``INFO commandstats``, the ``XREADGROUP`` and
``XACK`` calls per message (how many entries each read took, how many ids each
acknowledgement carried).

Producer: ``broadcast.send_many(..., durable=True)`` in batches of 1,000 from this
plain script, as the ``durable`` scenario sends; messages per second and CPU per message
are printed.

Run it against another copy of daebus with ``PYTHONPATH=DIR/src`` to compare two
versions of the path; the machine's load moves the rates, the command counts do not.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import redis
from _stream_baseline import produce, wait_groups

from daebus import broadcast, protocol
from daebus.server import EmbeddedServer

SERVICES = Path(__file__).resolve().parent / "_services.py"


def _commands(client: redis.Redis, *names: str) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in names}


def consumer_cost(url: str, kind: str, messages: int) -> None:
    client = redis.Redis.from_url(url)
    channel = f"cost-{uuid.uuid4().hex[:8]}"
    stream = protocol.stream_key(channel)
    common = [sys.executable, str(SERVICES)]
    if kind == "daebus":
        group = f"cost-service-{uuid.uuid4().hex[:6]}"
        role = ["daebus-service", "--url", url, "--ttl", "600", "--name", group]
        command = [*common, *role, "--durable", channel]
    else:
        group = "cost-group"
        role = ["bare-stream-consumer", "--url", url, "--ttl", "600"]
        command = [*common, *role, "--name", stream, "--group", group]
        if kind == "bare-ack-each":
            command += ["--count", "16", "--ack-each"]
    env = dict(os.environ, DAEBUS_REDIS_URL=url)
    quiet = subprocess.DEVNULL
    child = subprocess.Popen(command, env=env, stdin=quiet, stdout=quiet, stderr=quiet)
    try:
        wait_groups(client, stream, {group}, timeout=60.0)
        time.sleep(1.0)
        process = psutil.Process(child.pid)
        cpu = sum(process.cpu_times()[:2])
        client.config_resetstat()
        began = time.monotonic()
        produce(client, stream, "cost", messages, 1000, 2 * messages)
        while True:
            (info,) = [g for g in client.xinfo_groups(stream) if g["name"].decode() == group]
            if info["pending"] == 0 and info.get("lag") == 0:
                break
            time.sleep(0.01)
        elapsed = time.monotonic() - began
        cpu = sum(process.cpu_times()[:2]) - cpu
        calls = _commands(client, "xreadgroup", "xack")
    finally:
        child.terminate()
        child.wait(20)
        client.delete(stream)
        client.close()
    print(
        f"{kind} consumer, {messages:,} messages: {messages / elapsed:,.0f}/s,"
        f" {1e6 * cpu / messages:.1f} us CPU per message;"
        f" XREADGROUP {calls['xreadgroup'] / messages:.3f} per message"
        f" ({messages / max(1, calls['xreadgroup']):.1f} entries per read),"
        f" XACK {calls['xack'] / messages:.3f} per message"
    )


def producer_cost(url: str, messages: int) -> None:
    os.environ["DAEBUS_REDIS_URL"] = url
    client = redis.Redis.from_url(url)
    channel = f"cost-{uuid.uuid4().hex[:8]}"
    broadcast.send(channel, {}, durable=True, maxlen=1)  # connects
    began, cpu = time.monotonic(), time.process_time()
    for start in range(0, messages, 1000):
        batch = [(channel, {"run": "cost", "seq": seq}) for seq in range(start, start + 1000)]
        broadcast.send_many(batch[: messages - start], durable=True, maxlen=2 * messages)
    elapsed, cpu = time.monotonic() - began, time.process_time() - cpu
    client.delete(protocol.stream_key(channel))
    client.close()
    print(
        f"send_many(durable=True), {messages:,} messages: {messages / elapsed:,.0f}/s,"
        f" {1e6 * cpu / messages:.1f} us CPU per message"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--consumer", choices=["daebus", "bare", "bare-ack-each"])
    parser.add_argument("--producer", action="store_true")
    args = parser.parse_args()
    server = EmbeddedServer().start()
    try:
        if args.producer:
            producer_cost(server.url, args.messages)
        kinds = [args.consumer] if args.consumer else ["daebus", "bare"]
        if args.consumer or not args.producer:
            for kind in kinds:
                consumer_cost(server.url, kind, args.messages)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
