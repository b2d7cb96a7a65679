"""Durable listeners that keep order (``ordered=True``, ``key=``), removing one, and
how many run at once.

Each test runs on a real server and on the memory transport. Order is checked where it
is hardest to keep: two instances of the group, handlers that take varying time, a
message that fails before it succeeds, and the reader handing over its turn.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import threading
import time
from collections import defaultdict
from typing import Any

import pytest

from _apps import Apps
from _helpers import QUIET, unique_name, wait_for
from daebus import Daebus, SetupError, broadcast, request

pytestmark = pytest.mark.timeout(90)


def _send_all(url: str, channel: str, payloads: list[Any]) -> None:
    """Send durable messages from outside any app, in order, as a script would."""
    os.environ["DAEBUS_REDIS_URL"] = url
    try:
        for payload in payloads:
            broadcast.send(channel, payload, durable=True)
    finally:
        del os.environ["DAEBUS_REDIS_URL"]


def _inversions(numbers: list[int]) -> int:
    return sum(1 for before, after in itertools.pairwise(numbers) if after < before)


def test_ordered_listener_on_two_instances_keeps_stream_order(where: Apps) -> None:
    channel = unique_name("ledger")
    service = unique_name("books")
    seen: list[int] = []
    running = []
    lock = threading.Lock()
    for _ in range(2):
        app = Daebus("books")

        @app.listen(channel, durable=True, ordered=True)
        def apply(data: Any) -> None:
            with lock:
                running.append(1)
                assert len(running) == 1, "two messages of an ordered listener ran at once"
            time.sleep(random.random() / 2000)
            with lock:
                seen.append(data["n"])
                running.pop()

        where.start(app, service)
    _send_all(where.url, channel, [{"n": n} for n in range(1000)])
    wait_for(lambda: len(seen) >= 1000, timeout=60, message=lambda: f"{len(seen)} seen")
    time.sleep(QUIET)
    assert _inversions(seen) == 0
    assert seen == list(range(1000))


def test_keyed_listener_keeps_each_keys_order_and_runs_keys_side_by_side(where: Apps) -> None:
    channel = unique_name("events")
    app = Daebus("users")
    seen: dict[str, list[int]] = defaultdict(list)
    running: set[str] = set()
    overlaps = []
    lock = threading.Lock()

    @app.listen(channel, durable=True, key="user")
    async def on_event(data: Any) -> None:
        import asyncio

        with lock:
            assert data["user"] not in running, "two messages of one key ran at once"
            if running:
                overlaps.append(len(running))
            running.add(data["user"])
        await asyncio.sleep(random.random() / 200)
        with lock:
            seen[data["user"]].append(data["n"])
            running.discard(data["user"])

    where.start(app)
    users = [f"user{u}" for u in range(5)]
    _send_all(where.url, channel, [{"user": users[n % 5], "n": n} for n in range(300)])
    wait_for(lambda: sum(map(len, seen.values())) >= 300, timeout=60)
    time.sleep(QUIET)
    for user, numbers in seen.items():
        assert numbers == sorted(numbers), f"{user} out of order"
        assert len(numbers) == 60
    assert overlaps, "different keys never ran side by side"


def test_key_may_be_a_function_of_the_message(where: Apps) -> None:
    channel = unique_name("events")
    app = Daebus("users")
    seen: list[tuple[int, int]] = []

    @app.listen(channel, durable=True, key=lambda message: message[0])
    def on_event(data: Any) -> None:
        time.sleep(random.random() / 1000)
        seen.append((data[0], data[1]))

    where.start(app)
    _send_all(where.url, channel, [[n % 3, n] for n in range(60)])
    wait_for(lambda: len(seen) >= 60)
    for key in range(3):
        numbers = [n for k, n in seen if k == key]
        assert numbers == sorted(numbers)


def test_a_failing_ordered_message_holds_back_the_ones_behind_it(where: Apps) -> None:
    channel = unique_name("ledger")
    app = Daebus("books")
    seen: list[tuple[int, int]] = []
    failures = {"left": 2}

    @app.listen(channel, durable=True, ordered=True, backoff=0.05)
    def apply(data: int) -> None:
        if data == 3 and failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("not yet")
        seen.append((data, request.delivery_count))

    where.start(app)
    _send_all(where.url, channel, list(range(8)))
    wait_for(lambda: len(seen) >= 8)
    time.sleep(QUIET)
    assert [n for n, _ in seen] == list(range(8))
    assert dict(seen)[3] == 3  # the third delivery succeeded, in its place


def _applier(name: str, seen: list[tuple[str, int]]) -> Any:
    def apply(data: int) -> None:
        time.sleep(0.002)
        seen.append((name, data))

    return apply


def test_the_turn_moves_when_its_holder_stops(where: Apps) -> None:
    channel = unique_name("ledger")
    service = unique_name("books")
    seen: list[tuple[str, int]] = []
    apps = {}
    for name in ("first", "second"):
        app = Daebus(name)
        app.add_listener(channel, _applier(name, seen), durable=True, ordered=True, min_idle_time=3)
        where.start(app, service)
        apps[name] = app
    _send_all(where.url, channel, list(range(200)))
    wait_for(lambda: len(seen) >= 20)
    holder = seen[0][0]
    apps[holder].stop()
    wait_for(lambda: len({n for _, n in seen}) >= 200, timeout=30)
    numbers = [n for _, n in seen]
    # What the stopped holder was running when it stopped ran to its end; the order
    # of first handlings is the stream's.
    first_seen = list(dict.fromkeys(numbers))
    assert first_seen == list(range(200))
    assert {name for name, _ in seen} == {"first", "second"}


def test_a_removed_durable_listener_stops_taking_messages(where: Apps) -> None:
    channel = unique_name("jobs")
    app = Daebus("jobs")
    seen: list[int] = []

    def work(data: int) -> None:
        seen.append(data)

    app.add_listener(channel, work, durable=True)
    where.start(app)
    _send_all(where.url, channel, [1])
    wait_for(lambda: seen == [1])
    assert app.remove_listener(channel, work)
    runtime = app._runtime
    assert runtime is not None
    wait_for(lambda: (channel, None) not in runtime.durable.consumers)
    _send_all(where.url, channel, [2])
    time.sleep(QUIET)
    assert seen == [1]


def test_key_without_durable_is_refused() -> None:
    app = Daebus("svc")
    with pytest.raises(SetupError, match="durable"):
        app.add_listener("x", print, key="user")


def test_durable_handlers_count_against_max_in_flight(where: Apps) -> None:
    channel = unique_name("jobs")
    app = Daebus("jobs", max_in_flight=3)
    running: list[int] = []
    most = [0]
    done: list[int] = []
    lock = threading.Lock()

    @app.listen(channel, durable=True)
    def work(data: int) -> None:
        with lock:
            running.append(data)
            most[0] = max(most[0], len(running))
        time.sleep(0.02)
        with lock:
            running.remove(data)
            done.append(data)

    where.start(app)
    _send_all(where.url, channel, list(range(30)))
    wait_for(lambda: len(done) >= 30, timeout=30)
    assert sorted(done) == list(range(30))
    assert most[0] == 3


def test_async_durable_handlers_that_wait_count_against_max_in_flight(where: Apps) -> None:
    # A read may take more entries than there are free slots: those wait for a slot.
    channel = unique_name("jobs")
    app = Daebus("jobs", max_in_flight=3)
    running: set[int] = set()
    most = [0]
    done: list[int] = []

    @app.listen(channel, durable=True)
    async def work(data: int) -> None:
        running.add(data)
        most[0] = max(most[0], len(running))
        await asyncio.sleep(0.01)
        running.discard(data)
        done.append(data)

    where.start(app)
    _send_all(where.url, channel, list(range(40)))
    wait_for(lambda: len(done) >= 40, timeout=30)
    assert sorted(done) == list(range(40))
    assert most[0] == 3
