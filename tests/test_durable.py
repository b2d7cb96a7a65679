"""Durable channels: streams, consumer groups, retries, dead letters and reclaiming.

Each test runs on a real server, on the memory transport (``daebus.testing``), which
implements the same stream semantics, on a real cluster and on the master Sentinel names;
the killed-instance test
needs a subprocess and runs on the server only.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from _apps import Apps
from _cluster import client_for
from _helpers import QUIET, ServiceProcess, unique_name, wait_for
from daebus import Daebus, SetupError, broadcast, request
from daebus.protocol import dead_letter_key, stream_key
from daebus.transport import is_sentinel_url
from daebus.transport.memory import broker_for, forget
from daebus.transport.redis import sync_client

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["redis", "memory", "cluster", "sentinel"])
def where(request: pytest.FixtureRequest) -> Iterator[Apps]:
    """Apps on the shared server, on a fresh memory://, on the shared cluster, then on the
    shared Sentinel set-up's master."""
    if request.param == "memory":
        url = f"memory://{unique_name('where')}"
    else:
        url = request.getfixturevalue(f"{request.param}_url")
    with Apps(url) as manager:
        yield manager
    if url.startswith("memory://"):
        forget(url)


def _entries(url: str, stream: str) -> list[dict[str, bytes]]:
    if url.startswith("memory://"):
        return [entry.fields for entry in broker_for(url).streams.entries(stream)]
    client = _client(url)
    try:
        return [{k.decode(): v for k, v in fields.items()} for _, fields in client.xrange(stream)]
    finally:
        client.close()


def _client(url: str) -> Any:
    """A redis-py client of the server, the cluster or the Sentinel master ``url`` names."""
    return sync_client(url) if is_sentinel_url(url) else client_for(url)


def _length(url: str, stream: str) -> int:
    return len(_entries(url, stream))


def _send(url: str, channel: str, payload: Any, **options: Any) -> str:
    """Send a durable message from outside any app, as a script would."""
    os.environ["DAEBUS_REDIS_URL"] = url
    try:
        message_id = broadcast.send(channel, payload, durable=True, **options)
    finally:
        del os.environ["DAEBUS_REDIS_URL"]
    assert isinstance(message_id, str)
    return message_id


def _recorder(app: Daebus, channel: str, **options: Any) -> list[tuple[Any, str | None, int]]:
    seen: list[tuple[Any, str | None, int]] = []

    @app.listen(channel, durable=True, **options)
    def on_message(data: Any) -> None:
        seen.append((data, request.message_id, request.delivery_count))

    return seen


def test_messages_sent_while_down_are_handled_when_back(where: Apps) -> None:
    channel = unique_name("orders")
    service = unique_name("svc")
    first = Daebus("first")
    _recorder(first, channel)
    where.start(first, service)
    first.stop()
    ids = [_send(where.url, channel, {"n": n}) for n in range(3)]
    second = Daebus("second")
    seen = _recorder(second, channel)
    where.start(second, service)
    wait_for(lambda: len(seen) == 3, message=lambda: f"seen {seen}")
    assert [s[0]["n"] for s in seen] == [0, 1, 2]
    assert [s[1] for s in seen] == ids
    assert all(s[2] == 1 for s in seen)


def test_every_group_gets_every_message(where: Apps) -> None:
    channel = unique_name("events")
    app = Daebus("groups")
    a = _recorder(app, channel, group="a")
    b = _recorder(app, channel, group="b")
    where.start(app)
    for n in range(5):
        _send(where.url, channel, n)
    wait_for(lambda: len(a) == 5 and len(b) == 5, message=lambda: f"{a} {b}")
    assert sorted(s[0] for s in a) == sorted(s[0] for s in b) == list(range(5))


def test_instances_of_a_group_share_the_messages(where: Apps) -> None:
    channel = unique_name("jobs")
    service = unique_name("workers")
    seen: list[Any] = []
    lock = threading.Lock()
    apps = [Daebus("worker") for _ in range(2)]
    for app in apps:

        @app.listen(channel, durable=True)
        def work(data: Any) -> None:
            with lock:
                seen.append(data)
            time.sleep(0.01)

        where.start(app, service)
    for n in range(40):
        _send(where.url, channel, n)
    wait_for(lambda: len(seen) >= 40, message=lambda: f"seen {sorted(seen)}")
    time.sleep(QUIET)
    assert sorted(seen) == list(range(40))


def test_a_failing_handler_is_retried_then_acked(where: Apps) -> None:
    channel = unique_name("flaky")
    app = Daebus("flaky")
    counts: list[int] = []

    @app.listen(channel, durable=True, backoff=0.05)
    async def flaky(data: Any) -> None:
        counts.append(request.delivery_count)
        if len(counts) < 3:
            raise RuntimeError("not yet")

    service = where.start(app)
    _send(where.url, channel, "x")
    wait_for(lambda: len(counts) == 3, message=lambda: f"counts {counts}")
    time.sleep(QUIET)
    assert counts == [1, 2, 3]
    runtime = app._runtime
    assert runtime is not None
    wait_for(lambda: not runtime.durable.consumers[channel, None].held)
    assert _length(where.url, dead_letter_key(channel, service)) == 0
    if not where.url.startswith("memory://"):
        client = _client(where.url)
        assert client.xpending(stream_key(channel), service)["pending"] == 0
        client.close()


def test_a_poison_message_ends_in_the_dead_letter_stream(where: Apps) -> None:
    channel = unique_name("poison")
    app = Daebus("poison")
    tries: list[int] = []

    @app.listen(channel, durable=True, retries=2, backoff=0.02)
    def poisoned(data: Any) -> None:
        tries.append(request.delivery_count)
        raise ValueError("cannot digest")

    service = where.start(app)
    message_id = _send(where.url, channel, {"bad": True})
    dead = dead_letter_key(channel, service)
    entries = wait_for(lambda: _entries(where.url, dead), message="no dead letter")
    assert tries == [1, 2, 3]
    assert entries[0]["id"] == message_id.encode()
    assert b"cannot digest" in entries[0]["error"]
    assert entries[0]["data"] == b'{"bad":true}'
    assert entries[0]["deliveries"] == b"3"


def test_earliest_gets_the_backlog(where: Apps) -> None:
    channel = unique_name("backlog")
    for n in range(3):
        _send(where.url, channel, n)
    late = Daebus("late")
    latest = Daebus("latest")
    backlog = _recorder(late, channel, start="earliest")
    fresh = _recorder(latest, channel)
    where.start(late)
    where.start(latest)
    wait_for(lambda: len(backlog) == 3, message=lambda: f"{backlog}")
    time.sleep(QUIET)
    assert fresh == []


def test_retention_keeps_the_stream_bounded(where: Apps) -> None:
    channel = unique_name("bounded")
    app = Daebus("bounded")
    where.start(app)
    for n in range(600):
        _send(where.url, channel, n, maxlen=50)
    # MAXLEN ~ trims whole nodes of the stream: a little more than 50 may stay.
    assert 50 <= _length(where.url, stream_key(channel)) < 250


def test_a_glob_durable_listener_is_refused() -> None:
    app = Daebus("glob")
    with pytest.raises(SetupError, match="exact channel names"):

        @app.listen("sensors:*", durable=True)
        def on_reading(data: Any) -> None:
            pass


def test_a_long_handler_keeps_its_message(where: Apps) -> None:
    channel = unique_name("long")
    service = unique_name("slow")
    calls: list[int] = []
    lock = threading.Lock()
    apps = [Daebus("slow") for _ in range(2)]
    for app in apps:

        @app.listen(channel, durable=True, min_idle_time=0.3)
        def slow(data: Any) -> None:
            with lock:
                calls.append(request.delivery_count)
            time.sleep(1.2)

        where.start(app, service)
    _send(where.url, channel, "long")
    wait_for(lambda: calls, message="not handled")
    time.sleep(1.5)
    assert calls == [1]


KILLED_SERVICE = """
import sys, time
from daebus import Daebus
app = Daebus("victim")

@app.listen(sys.argv[1], durable=True, min_idle_time=0.5)
def hang(data):
    print("got", data, flush=True)
    time.sleep(60)

app.run(sys.argv[2])
"""


def test_a_message_held_by_a_killed_instance_is_reclaimed(apps: Apps, redis_url: str) -> None:
    channel = unique_name("orphan")
    service = unique_name("reclaim")
    with ServiceProcess(code=KILLED_SERVICE, args=[channel, service], redis_url=redis_url) as proc:
        proc.wait_ready(service)
        _send(redis_url, channel, "orphan")
        wait_for(lambda: "got orphan" in proc.stdout(), timeout=10, message=proc.output)
        proc.kill()
    survivor = Daebus("survivor")
    seen = _recorder(survivor, channel, min_idle_time=0.5)
    apps.start(survivor, service)
    wait_for(lambda: seen, timeout=10, message="not reclaimed")
    assert seen[0][0] == "orphan"
    assert seen[0][2] == 2
