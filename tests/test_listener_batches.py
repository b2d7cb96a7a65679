"""Broadcasts that arrive together are handled in one task, and each still behaves as if
it had a task of its own: its own context, its own task from start to end, no waiting
behind a neighbour that waits, and the same limit on how many run at once."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import threading
import time
from typing import Any, cast

import pytest
import redis

from _apps import Apps
from _helpers import QUIET, unique_name, wait_for
from daebus import Daebus, request
from daebus._compat import timeout
from daebus.context import MessageContext
from daebus.protocol import ReplyChannels
from daebus.runtime.broadcasts import BroadcastContext
from daebus.runtime.eager import finish, first_step
from daebus.runtime.publisher import Publisher
from daebus.transport import Delivery
from daebus.transport.memory import MemoryTransport, forget

#: Set by a listener for its own message; a message after it must not see the value.
mark: contextvars.ContextVar[int | None] = contextvars.ContextVar("mark", default=None)


def publish_together(url: str, channel: str, count: int) -> None:
    """Publish ``{"seq": n}`` for n < count in one write, so they arrive together."""
    client = redis.Redis.from_url(url)
    try:
        with client.pipeline(transaction=False) as pipe:
            for seq in range(count):
                pipe.publish(channel, json.dumps({"seq": seq}))
            assert pipe.execute() == [1] * count
    finally:
        client.close()


def test_a_batch_shares_a_task_but_each_message_has_its_own_context(apps: Apps) -> None:
    app = Daebus("batched")
    channel = unique_name("together")
    seen: list[tuple[int, int | None, asyncio.Task[Any]]] = []  # tasks kept: ids unique

    @app.listen(channel)
    async def on_message(data: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        seen.append((data["seq"], mark.get(), task))
        mark.set(data["seq"])

    apps.start(app)
    publish_together(apps.url, channel, 50)
    wait_for(lambda: len(seen) == 50, message=f"50 messages, got {len(seen)}")
    assert [seq for seq, _, _ in seen] == list(range(50))
    assert [before for _, before, _ in seen] == [None] * 50  # nothing leaks to the next
    assert len({task for _, _, task in seen}) < 50  # they did share: the path under test


def test_a_message_that_waits_keeps_its_task_and_does_not_hold_up_the_rest(
    apps: Apps,
) -> None:
    app = Daebus("waiting")
    channel = unique_name("together")
    events: list[str] = []
    gate: asyncio.Event | None = None

    @app.listen(channel)
    async def on_message(data: Any) -> None:
        nonlocal gate
        seq = data["seq"]
        gate = gate or asyncio.Event()
        task = asyncio.current_task()
        if seq == 3:  # waits, with a timeout: that needs the same task throughout
            try:
                async with timeout(0.2):  # asyncio.timeout; async-timeout's on 3.10
                    await asyncio.Event().wait()
            except asyncio.TimeoutError:
                same = asyncio.current_task() is task
                events.append(f"3 timed out in {'its own' if same else 'another'} task")
            return
        if seq == 5:  # waits for a later message of the same batch
            await gate.wait()
            events.append(f"5 let through as {request.payload['seq']}")
            return
        if seq == 9:
            gate.set()
        events.append(str(seq))

    apps.start(app)
    publish_together(apps.url, channel, 12)
    wait_for(lambda: len(events) == 12, message=f"12 events, got {events}")
    assert events.index("9") < events.index("5 let through as 5")
    assert "3 timed out in its own task" in events
    assert [e for e in events if e.isdigit()] == [str(n) for n in range(12) if n not in (3, 5)]


def test_a_failing_or_self_cancelling_listener_does_not_stop_its_batch(
    apps: Apps, caplog: pytest.LogCaptureFixture
) -> None:
    app = Daebus("failing")
    channel = unique_name("together")
    handled: list[int] = []

    @app.listen(channel)
    async def on_message(data: Any) -> None:
        seq = data["seq"]
        if seq == 2:
            raise ValueError("listener bug")
        if seq == 4:
            raise asyncio.CancelledError
        handled.append(seq)

    apps.start(app)
    with caplog.at_level(logging.ERROR, logger="daebus"):
        publish_together(apps.url, channel, 8)
        wait_for(lambda: len(handled) == 6, message=f"6 handled, got {handled}")
    assert handled == [0, 1, 3, 5, 6, 7]
    assert "listener bug" in caplog.text
    runtime = app._runtime
    assert runtime is not None
    wait_for(lambda: runtime.active == 0, message="every message counted out")


def test_a_batch_is_held_to_max_in_flight(apps: Apps) -> None:
    app = Daebus("bounded", max_in_flight=3)
    channel = unique_name("together")
    entered: list[int] = []
    finished: list[int] = []
    gate = threading.Event()

    @app.listen(channel)
    async def on_message(data: Any) -> None:
        entered.append(data["seq"])
        await asyncio.get_running_loop().run_in_executor(None, gate.wait, 10)
        finished.append(data["seq"])

    apps.start(app)
    runtime = app._runtime
    assert runtime is not None
    publish_together(apps.url, channel, 10)
    wait_for(lambda: len(entered) == 3)
    time.sleep(QUIET)  # an absence window: a fourth message would start if the limit leaked
    assert entered == [0, 1, 2]
    assert runtime.active == 3
    gate.set()
    wait_for(lambda: len(finished) == 10, message=f"10 finished, got {finished}")
    assert entered == list(range(10))
    wait_for(lambda: runtime.busy == 0 and runtime.active == 0)


def test_stop_cancels_a_waiting_listener_of_a_batch_in_its_own_context(apps: Apps) -> None:
    app = Daebus("stuck", shutdown_timeout=0.2)
    channel = unique_name("together")
    entered: list[int] = []
    unwound: list[int] = []

    @app.listen(channel)
    async def on_message(data: Any) -> None:
        entered.append(data["seq"])
        if data["seq"] == 1:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                unwound.append(request.payload["seq"])  # its own message, even now
                raise

    apps.start(app)
    publish_together(apps.url, channel, 3)
    wait_for(lambda: len(entered) == 3)
    app.stop()
    assert unwound == [1]
    assert not app.is_running()


def test_a_transport_that_does_not_end_batches_still_gets_each_message_handled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(MemoryTransport, "ends_batches", False)
    monkeypatch.setattr(MemoryTransport, "_end_batch", lambda self: None)
    url = f"memory://{unique_name('unbatched')}"
    app = Daebus("unbatched")
    seen: list[int] = []

    @app.listen("numbers")
    async def on_number(data: Any) -> None:
        seen.append(data)

    app.start("unbatched", redis_url=url)
    try:
        for number in range(5):
            broadcast_to(url, "numbers", number)
        wait_for(lambda: len(seen) == 5, message=f"5 messages, got {seen}")
        assert seen == list(range(5))
    finally:
        app.stop()
        forget(url)


def broadcast_to(url: str, channel: str, value: Any) -> None:
    async def publish() -> None:
        transport = MemoryTransport(url)
        try:
            assert await transport.publish(channel, json.dumps(value).encode()) == 1
        finally:
            await transport.close()

    asyncio.run(publish())


def test_a_listener_replaced_while_running_is_called_the_new_ones_way(apps: Apps) -> None:
    # The runtime remembers how each channel's listener is called; a function put in
    # listen_handlers in its place (here a def taking the channel, for an async def
    # taking data alone) is inspected anew.
    app = Daebus("replaced")
    channel = unique_name("replaced")
    calls: list[tuple[str, Any, str | None]] = []

    @app.listen(channel)
    async def first(data: Any) -> None:
        calls.append(("first", data["seq"], None))

    def second(data: Any, channel_name: str) -> None:
        calls.append(("second", data["seq"], channel_name))

    apps.start(app)
    publish_together(apps.url, channel, 2)
    wait_for(lambda: len(calls) == 2, message=str(calls))
    app.listen_handlers[channel] = second
    publish_together(apps.url, channel, 2)
    wait_for(lambda: len(calls) == 4, message=str(calls))
    assert calls == [
        ("first", 0, None),
        ("first", 1, None),
        ("second", 0, channel),
        ("second", 1, channel),
    ]


def test_the_flow_log_shows_each_broadcast_once_it_is_turned_on(
    apps: Apps, caplog: pytest.LogCaptureFixture
) -> None:
    # Whether daebus.flow logs is asked once per batch: a batch after the change logs.
    app = Daebus("flowing")
    channel = unique_name("flow")
    seen: list[int] = []

    @app.listen(channel)
    async def on_message(data: Any) -> None:
        seen.append(data["seq"])

    apps.start(app)
    publish_together(apps.url, channel, 3)
    wait_for(lambda: len(seen) == 3)
    flow = [r for r in caplog.records if r.name == "daebus.flow"]
    assert flow == []
    caplog.set_level(logging.DEBUG, logger="daebus.flow")
    publish_together(apps.url, channel, 3)
    wait_for(lambda: len(seen) == 6)
    flow = [r.getMessage() for r in caplog.records if r.name == "daebus.flow"]
    assert len(flow) == 3, flow
    assert all(m.startswith(f"-> {channel} (listener {channel}) ") for m in flow), flow
    assert flow[-1].endswith('{"seq": 2}')  # json.dumps's spacing: the bytes as sent


# -- the parts: stepping by hand, the lazy context --------------------------------------
async def test_first_step_runs_a_coroutine_that_never_waits_in_a_context_of_its_own() -> None:
    async def work() -> None:
        mark.set(1)

    assert first_step(work()) is None
    assert mark.get() is None  # set in a copy of the context


async def test_finish_sees_a_stepped_coroutine_through_as_await_would() -> None:
    seen: list[tuple[asyncio.Task[Any] | None, int | None]] = []
    gate = asyncio.Event()

    async def work() -> None:
        mark.set(1)
        seen.append((asyncio.current_task(), mark.get()))
        await gate.wait()
        seen.append((asyncio.current_task(), mark.get()))

    stepped = first_step(work())
    assert stepped is not None
    assert len(seen) == 1
    asyncio.get_running_loop().call_soon(gate.set)
    await finish(stepped)
    me = asyncio.current_task()
    assert seen == [(me, 1), (me, 1)]
    assert mark.get() is None  # the awaiting task's context is not the coroutine's


async def test_a_stepped_coroutine_is_cancelled_with_the_task_that_finishes_it() -> None:
    unwound: list[int | None] = []
    waiting = asyncio.Event()

    async def work() -> None:
        mark.set(2)
        try:
            waiting.set()
            await asyncio.sleep(60)
        finally:
            unwound.append(mark.get())

    async def batch() -> None:
        stepped = first_step(work())
        assert stepped is not None
        await finish(stepped)

    task = asyncio.get_running_loop().create_task(batch())
    await waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert unwound == [2]


def test_a_broadcast_context_ends_up_with_every_field_of_a_message_context() -> None:
    # It sets MessageContext's fields itself instead of calling its __init__: a field
    # added there must be added here too.
    app = Daebus("fields")
    delivery = Delivery("news", b'{"n": 1}')
    publisher = Publisher(cast(Any, None))
    replies = ReplyChannels("fields", app.reply_channels)
    ctx = BroadcastContext(app, publisher, replies, delivery, {"n": 1})
    assert not ctx.built
    assert ctx.request.payload == {"n": 1}
    assert ctx.built
    plain = MessageContext(app, "pubsub")
    for field in MessageContext.__slots__:
        assert hasattr(ctx, field), field
        assert hasattr(plain, field), field
    assert (ctx.app, ctx.kind) == (plain.app, plain.kind)
