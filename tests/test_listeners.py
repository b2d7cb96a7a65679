"""Listeners: several on one channel, removed while running, and ordered ones.

Each listener of a channel gets every message in a context of its own, and one that
raises does not stop the others. ``remove_listener`` works before and while the app
runs; the channel is unsubscribed with its last listener. ``ordered=True`` hands a
listener its messages one at a time, in the order they arrived, ``def`` or ``async def``.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import json
import logging
import random
import threading
import time
from typing import Any

import pytest
import redis

from _apps import Apps
from _helpers import subscriber_count, unique_name, wait_for, wait_subscribed
from daebus import Blueprint, Daebus, request
from daebus.testing import run_app

#: Set by a listener for its own message; a later message must not see it.
mark: contextvars.ContextVar[int | None] = contextvars.ContextVar("mark", default=None)


def publish_in_order(url: str, channel: str, count: int) -> None:
    """Publish ``{"seq": n}`` for n < count from one client, in pipelines of 200."""
    client = redis.Redis.from_url(url)
    try:
        for start in range(0, count, 200):
            with client.pipeline(transaction=False) as pipe:
                for seq in range(start, min(start + 200, count)):
                    pipe.publish(channel, json.dumps({"seq": seq}))
                pipe.execute()
    finally:
        client.close()


def inversions(seen: list[int]) -> int:
    """How many neighbours are out of order."""
    return sum(1 for a, b in itertools.pairwise(seen) if a > b)


# -- several listeners on one channel -------------------------------------------------
def test_every_listener_of_a_channel_gets_every_message_in_its_own_context(
    apps: Apps, caplog: pytest.LogCaptureFixture
) -> None:
    app = Daebus("several")
    channel = unique_name("events")
    calls: list[tuple[str, int, int | None, str | None]] = []
    lock = threading.Lock()

    @app.listen(channel)
    def audit(data: Any) -> None:
        with lock:
            calls.append(("audit", data["seq"], mark.get(), request.channel))
        mark.set(data["seq"])

    @app.listen(channel)
    async def count(data: Any, channel_name: str) -> None:
        calls.append(("count", data["seq"], mark.get(), channel_name))
        mark.set(data["seq"])

    @app.listen(channel)
    async def broken(data: Any) -> None:
        raise RuntimeError(f"broken on {data['seq']}")

    assert app.listeners(channel) == [audit, count, broken]
    apps.start(app)
    publish_in_order(apps.url, channel, 20)
    wait_for(lambda: len(calls) == 40, message=lambda: f"40 calls, got {len(calls)}")
    for name in ("audit", "count"):
        mine = [call for call in calls if call[0] == name]
        assert sorted(seq for _, seq, _, _ in mine) == list(range(20))
        assert {before for _, _, before, _ in mine} == {None}  # nothing leaks
        assert {where for _, _, _, where in mine} == {channel}
    failure = next(r for r in caplog.records if "failed on a message" in r.getMessage())
    assert "broken" in failure.getMessage()


def test_listen_handlers_reads_as_0_0_31_had_it(apps: Apps) -> None:
    # 0.0.31's table: channel -> one function. Now the last registered of the channel.
    app = Daebus("table")
    channel = unique_name("events")
    calls: list[str] = []

    def first(data: Any) -> None:
        calls.append("first")

    def second(data: Any) -> None:
        calls.append("second")

    def third(data: Any) -> None:
        calls.append("third")

    app.add_listener(channel, first)
    app.listen(channel)(second)
    assert app.listen_handlers == {channel: second}
    assert app.listen_handlers[channel] is second
    assert list(app.listen_handlers) == [channel]
    assert len(app.listen_handlers) == 1
    app.add_listener(channel, first)  # listening already: not added twice
    assert app.listeners(channel) == [first, second]
    app.listen_handlers[channel] = third  # as 0.0.31 code did: the one listener now
    assert app.listeners(channel) == [third]
    del app.listen_handlers[channel]
    assert app.listen_handlers == {}
    app.listen_handlers = {channel: first}
    assert app.listeners(channel) == [first]

    caller = apps.caller(apps.start(app))
    assert caller.send_message(channel, {"n": 1}) == 1
    wait_for(lambda: calls == ["first"])


def test_a_blueprint_keeps_every_listener_and_joins_the_apps(apps: Apps) -> None:
    app = Daebus("with-blueprint")
    events = Blueprint("events")
    channel = unique_name("events")
    calls: list[str] = []

    @app.listen(channel)
    def on_app(data: Any) -> None:
        calls.append("app")

    @events.listen(channel)
    def on_blueprint(data: Any) -> None:
        calls.append("blueprint")

    @events.listen(channel)
    async def on_blueprint_too(data: Any) -> None:
        calls.append("blueprint too")

    assert events.listeners(channel) == [on_blueprint, on_blueprint_too]
    app.register_blueprint(events)
    app.register_blueprint(events)  # again: the same functions are not added twice
    assert app.listeners(channel) == [on_app, on_blueprint, on_blueprint_too]
    caller = apps.caller(apps.start(app))
    caller.send_message(channel, {"n": 1})
    wait_for(lambda: len(calls) == 3)
    assert sorted(calls) == ["app", "blueprint", "blueprint too"]


# -- removing listeners ---------------------------------------------------------------
def test_a_listener_removed_before_start_is_not_subscribed(apps: Apps) -> None:
    app = Daebus("removed-early")
    channel, other = unique_name("gone"), unique_name("kept")

    def listener(data: Any) -> None: ...

    def other_listener(data: Any) -> None: ...

    app.add_listener(channel, listener)
    app.add_listener(other, listener)
    app.add_listener(other, other_listener)
    assert app.remove_listener(channel, listener) is True
    assert app.remove_listener(channel, listener) is False  # nothing left to remove
    assert app.remove_listener(other, listener) is True
    assert app.listeners(other) == [other_listener]
    apps.start(app)
    wait_subscribed(apps.url, other)
    client = redis.Redis.from_url(apps.url)
    try:
        assert subscriber_count(client, channel) == 0
    finally:
        client.close()


def test_removing_listeners_while_running_unsubscribes_with_the_last_one(apps: Apps) -> None:
    app = Daebus("removed-live")
    channel = unique_name("live")
    calls: list[tuple[str, int]] = []

    @app.listen(channel)
    def first(data: Any) -> None:
        calls.append(("first", data["n"]))

    @app.listen(channel)
    async def second(data: Any) -> None:
        calls.append(("second", data["n"]))

    caller = apps.caller(apps.start(app))
    client = redis.Redis.from_url(apps.url)
    try:
        assert caller.send_message(channel, {"n": 1}) == 1
        wait_for(lambda: len(calls) == 2)
        assert app.remove_listener(channel, first) is True
        assert subscriber_count(client, channel) == 1  # second still listens
        caller.send_message(channel, {"n": 2})
        wait_for(lambda: ("second", 2) in calls)
        assert app.remove_listener(channel) is True  # all that are left
        assert subscriber_count(client, channel) == 0  # unsubscribed before it returned
        assert client.publish(channel, json.dumps({"n": 3})) == 0
        app.add_listener(channel, first)  # and subscribed again
        assert subscriber_count(client, channel) == 1
        caller.send_message(channel, {"n": 4})
        wait_for(lambda: ("first", 4) in calls)
    finally:
        client.close()
    assert sorted(calls) == [("first", 1), ("first", 4), ("second", 1), ("second", 2)]


def test_a_listener_can_remove_itself(apps: Apps) -> None:
    # From the loop (async def) and from a worker (def): once-only listeners.
    app = Daebus("once")
    channel = unique_name("once")
    calls: list[str] = []

    @app.listen(channel, ordered=True)
    async def once_async(data: Any) -> None:
        calls.append(f"async {data['seq']}")
        app.remove_listener(channel, once_async)

    @app.listen(channel, ordered=True)
    def once_def(data: Any) -> None:
        calls.append(f"def {data['seq']}")
        app.remove_listener(channel, once_def)

    apps.start(app)
    publish_in_order(apps.url, channel, 3)
    client = redis.Redis.from_url(apps.url)
    try:
        wait_for(lambda: subscriber_count(client, channel) == 0)
    finally:
        client.close()
    assert sorted(calls) == ["async 0", "def 0"]


# -- ordered listeners ----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["def", "async def"])
def test_an_ordered_listener_gets_one_publishers_messages_in_order(apps: Apps, kind: str) -> None:
    app = Daebus("ordered")
    channel = unique_name("ordered")
    seen: list[int] = []
    inside: list[int] = []  # how many calls were running as each one began
    running = 0
    rng = random.Random(7)

    def enter() -> None:
        nonlocal running
        running += 1
        inside.append(running)

    def leave(seq: int) -> None:
        nonlocal running
        seen.append(seq)
        running -= 1

    if kind == "def":

        @app.listen(channel, ordered=True)
        def on_message(data: Any) -> None:
            enter()
            time.sleep(rng.random() / 2000)  # up to half a millisecond
            leave(data["seq"])

    else:

        @app.listen(channel, ordered=True)
        async def on_message(data: Any) -> None:
            enter()
            if rng.random() < 0.2:
                await asyncio.sleep(rng.random() / 2000)
            leave(data["seq"])

    apps.start(app)
    publish_in_order(apps.url, channel, 1000)
    wait_for(lambda: len(seen) == 1000, timeout=30, message=lambda: f"got {len(seen)}")
    assert inversions(seen) == 0
    assert seen == list(range(1000))
    assert set(inside) == {1}


def test_an_unordered_def_listener_still_runs_side_by_side(apps: Apps) -> None:
    # Two calls inside the listener at once: only possible if they run side by side.
    app = Daebus("side-by-side")
    channel = unique_name("unordered")
    both_in = threading.Barrier(2, timeout=10)
    passed: list[int] = []

    @app.listen(channel)
    def on_message(data: Any) -> None:
        both_in.wait()
        passed.append(data["seq"])

    apps.start(app)
    publish_in_order(apps.url, channel, 2)
    wait_for(lambda: len(passed) == 2)


def test_an_ordered_listener_holds_up_neither_its_neighbours_nor_the_actions(
    apps: Apps,
) -> None:
    app = Daebus("busy-ordered", max_workers=2, max_in_flight=4)
    channel = unique_name("ordered")
    gate = threading.Event()
    ordered: list[int] = []
    plain: list[int] = []

    @app.listen(channel, ordered=True)
    def slow(data: Any) -> None:
        gate.wait(10)
        ordered.append(data["seq"])

    @app.listen(channel)
    async def fast(data: Any) -> None:
        plain.append(data["seq"])

    @app.action("ping")
    def ping() -> str:
        return "pong"

    caller = apps.caller(apps.start(app))
    try:
        publish_in_order(apps.url, channel, 50)  # far more than max_in_flight
        wait_for(lambda: len(plain) == 50)
        assert caller.send_request("ping") == "pong"  # one slot held, not all of them
        assert ordered == []
    finally:
        gate.set()
    wait_for(lambda: len(ordered) == 50)
    assert ordered == list(range(50))


def test_each_message_of_an_ordered_listener_has_its_own_context(apps: Apps) -> None:
    app = Daebus("ordered-contexts")
    channel = unique_name("ordered")
    seen: list[tuple[int, int | None]] = []

    @app.listen(channel, ordered=True)
    async def on_message(data: Any) -> None:
        seen.append((data["seq"], mark.get()))
        mark.set(data["seq"])
        await asyncio.sleep(0.001)  # the next messages wait for it, in its task

    apps.start(app)
    publish_in_order(apps.url, channel, 20)
    wait_for(lambda: len(seen) == 20)
    assert seen == [(seq, None) for seq in range(20)]


def test_an_ordered_listeners_backlog_is_bounded_and_dropped_at_stop(
    apps: Apps, caplog: pytest.LogCaptureFixture
) -> None:
    app = Daebus("ordered-backlog", max_queued_bytes=5000, shutdown_timeout=2)
    channel = unique_name("ordered")
    gate = threading.Event()
    seen: list[int] = []

    @app.listen(channel, ordered=True)
    def on_message(data: Any) -> None:
        gate.wait(10)
        seen.append(data["seq"])

    apps.start(app)
    try:
        publish_in_order(apps.url, channel, 200)  # about 14 kB: more than may wait
        wait_for(lambda: "listeners fell behind" in caplog.text)
        runtime = app._runtime
        assert runtime is not None
        assert runtime.admission.bytes <= 5000
        with caplog.at_level(logging.WARNING, logger="daebus"):
            stopper = threading.Thread(target=app.stop)
            stopper.start()
            wait_for(lambda: not app.is_running())
    finally:
        gate.set()
    stopper.join(10)
    assert seen == [0]  # the one being handled finished; the rest was dropped
    assert "broadcast(s) that had not started" in caplog.text


# -- on memory:// (daebus.testing) ----------------------------------------------------
def test_listeners_on_memory_several_removed_and_ordered() -> None:
    app = Daebus("memory-listeners")
    calls: list[tuple[str, int]] = []

    @app.listen("events")
    def first(data: Any) -> None:
        calls.append(("first", data["seq"]))

    @app.listen("events", ordered=True)
    def second(data: Any) -> None:
        time.sleep(random.random() / 5000)
        calls.append(("second", data["seq"]))

    with run_app(app) as client:
        for seq in range(100):
            client.publish("events", {"seq": seq}, wait=False)
        client.wait_idle()
        assert sorted(seq for name, seq in calls if name == "first") == list(range(100))
        assert [seq for name, seq in calls if name == "second"] == list(range(100))
        calls.clear()
        assert app.remove_listener("events", first) is True
        client.publish("events", {"seq": 100})
        assert calls == [("second", 100)]
        app.remove_listener("events")
        assert client.publish("events", {"seq": 101}) == 0  # unsubscribed
    assert calls == [("second", 100)]


def test_remove_listener_returns_false_for_unknown_ones_and_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Daebus("unknown")

    def listener(data: Any) -> None: ...

    assert app.remove_listener("nowhere") is False
    app.add_listener("somewhere", listener)
    assert app.remove_listener("somewhere", print) is False
    assert app.listeners("somewhere") == [listener]
    assert caplog.records == []
