"""The durable baseline: a bare stream producer and consumer with plain redis-py (hiredis).

Messages are entries of one field, ``data``: the JSON of ``{"run", "seq"}`` (the same
format daebus writes, docs/durable.md, so the bare producer can feed daebus's
listeners too).

- :func:`produce`: ``XADD stream MAXLEN ~ maxlen * data <json>``, pipelined in batches,
  as a hand-written producer after throughput would send them.
- :func:`consumer_main`: one consumer of its own group: ``XREADGROUP GROUP g c COUNT n
  BLOCK ms STREAMS stream >``, tally each entry, then one ``XACK`` of the batch's ids
  (each entry is acknowledged after it was handled: at least once, as daebus's). With
  ``--ack-each`` it acknowledges every entry on its own instead, as daebus does; with
  ``--count`` it reads that many at most (daebus reads 16).

A ``{"report": run, "reply_to": channel}`` entry asks for the tally of ``run``; it is
answered on ``reply_to`` (PUBLISH) after every entry added before it.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from _common import Tally

#: Entries read at most per XREADGROUP by the bare consumer.
READ_COUNT = 100
#: How long one read waits for new entries, in ms.
READ_BLOCK_MS = 1000


def create_group(client: redis.Redis, stream: str, group: str) -> None:
    """``XGROUP CREATE stream group $ MKSTREAM``, unless the group exists."""
    try:
        client.xgroup_create(stream, group, id="$", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def groups_of(client: redis.Redis, stream: str) -> set[str]:
    """The names of the consumer groups of ``stream`` (none if it does not exist)."""
    try:
        found = client.xinfo_groups(stream)
    except redis.ResponseError:
        return set()
    names = set()
    for group in found:
        name = group["name"]
        names.add(name.decode() if isinstance(name, bytes) else str(name))
    return names


def produce(
    client: redis.Redis, stream: str, run: str, count: int, batch: int, maxlen: int
) -> None:
    """Append ``{"run": run, "seq": n}`` for n in 0..count-1, ``batch`` XADDs per pipeline."""
    dumps = json.dumps
    for start in range(0, count, batch):
        pipe = client.pipeline(transaction=False)
        for seq in range(start, min(count, start + batch)):
            pipe.xadd(
                stream, {"data": dumps({"run": run, "seq": seq})}, maxlen=maxlen, approximate=True
            )
        pipe.execute()


def consumer_main(
    url: str, stream: str, group: str, count: int = READ_COUNT, ack_each: bool = False
) -> None:
    """A bare consumer of its own group: read, tally, acknowledge; answer reports."""
    client = redis.Redis.from_url(url)
    create_group(client, stream, group)
    consumer = f"bare-{os.getpid()}"
    tally = Tally()
    loads = json.loads
    streams: Any = {stream: ">"}
    while True:
        answer: Any = client.xreadgroup(group, consumer, streams, count=count, block=READ_BLOCK_MS)
        if not answer:
            continue
        entries = answer[0][1]
        for entry_id, fields in entries:
            data = loads(fields[b"data"])
            if "report" in data:
                report = {**tally.report(data["report"]), "pid": os.getpid()}
                client.publish(data["reply_to"], json.dumps(report))
            else:
                tally.add(data)
            if ack_each:
                client.xack(stream, group, entry_id)
        if not ack_each:
            client.xack(stream, group, *(entry_id for entry_id, _ in entries))


def wait_groups(client: redis.Redis, stream: str, groups: set[str], timeout: float = 20.0) -> None:
    """Wait until every group of ``groups`` exists on ``stream``."""
    deadline = time.monotonic() + timeout
    while not groups <= groups_of(client, stream):
        if time.monotonic() > deadline:
            missing = groups - groups_of(client, stream)
            raise RuntimeError(f"groups {sorted(missing)} never appeared on {stream!r}")
        time.sleep(0.02)
