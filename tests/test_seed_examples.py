"""The examples that answer the user's Redis pub/sub documents do what the README says.

``examples/pubsub_guide/`` answers the Redis Toolkit pub/sub guide, ``protean_broker/``
Protean's Redis PubSub broker guide, ``realtime_guide/`` the Redis pub/sub how-to (the
README has a section for each). Services run as ``python examples/...`` in a subprocess,
as a user would, and must exit with status 0 on SIGTERM; those whose module state a test
reads, or that serve WebSocket clients on a free port, run in-process. Each test has a
server of its own (``private_redis``): the examples use fixed channel names, and the
durable ones leave streams behind.

Several listeners of one service may print at once, from several threads, and two
``print`` calls can interleave: outputs are searched for whole phrases, never split into
lines.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.util
import json
import re
import signal
import sys
import time
import types
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp import WSMsgType

from _apps import Apps
from _helpers import (
    EXAMPLES,
    QUIET,
    ServiceProcess,
    Subscription,
    load_example,
    wait_for,
    wait_subscribed,
    wait_until,
)
from _servers import RedisServer
from daebus import Daebus, DaebusCaller, DeadLetters, broadcast, health_stats, protocol

pytestmark = pytest.mark.timeout(120)

HOST = "127.0.0.1"


# -- running the examples ---------------------------------------------------------------


@contextlib.contextmanager
def running(
    relpath: str, url: str, *args: str, ready: str | None = None, count: int = 1
) -> Iterator[ServiceProcess]:
    """Run ``python examples/<relpath> *args`` until the block ends, then SIGTERM it.

    With `ready`, waits until that channel has `count` subscribers. When the block ends
    normally the service must exit with status 0.
    """
    with ServiceProcess(EXAMPLES / relpath, args=args, redis_url=url) as proc:
        if ready is not None:
            proc.wait_ready(ready, count=count)
        yield proc
        code = proc.terminate(signal.SIGTERM)
        assert code == 0, f"exit status {code} after SIGTERM\n{proc.output()}"


def run_script(relpath: str, url: str, *args: str) -> str:
    """Run a one-off example to its end (exit status 0); returns what it printed."""
    with ServiceProcess(EXAMPLES / relpath, args=args, redis_url=url) as proc:
        code = proc.wait(60)
        assert code == 0, f"exit status {code}\n{proc.output()}"
        return proc.stdout()


def wait_printed(proc: ServiceProcess, *phrases: str, timeout: float = 20.0) -> str:
    """Wait until the service has printed every phrase; returns its stdout."""
    wait_for(
        lambda: all(phrase in proc.stdout() for phrase in phrases),
        timeout=timeout,
        message=lambda: (
            f"missing {[p for p in phrases if p not in proc.stdout()]}\n{proc.output()}"
        ),
    )
    return proc.stdout()


def load_instance(relpath: str, module_name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Import an example afresh under `module_name`, as one more instance of its service.

    Instances tell their shared listeners apart by module and function name, so every
    instance of one example is imported under the same name, as ``python x.py`` would.
    """
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / relpath)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, module_name, module)
    spec.loader.exec_module(module)
    return module


def group_stats(url: str, channel: str) -> dict[str, Any]:
    stats = health_stats(url, [channel], timeout=10)
    assert stats["healthy"], stats
    result: dict[str, Any] = stats["channels"][channel]
    return result


@pytest.fixture
def server_url(private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """This test's server, also the one `broadcast` and `cache` use in this process."""
    monkeypatch.setenv("DAEBUS_REDIS_URL", private_redis.url)
    return private_redis.url


# -- the Redis pub/sub guide (001) ------------------------------------------------------


def test_pubsub_guide_subscriber_gets_what_the_publisher_sends(server_url: str) -> None:
    with running("pubsub_guide/subscriber.py", server_url, ready="news") as subscriber:
        wait_subscribed(server_url, "bulk_updates")
        printed = run_script("pubsub_guide/publisher.py", server_url)
        assert "Message sent to 1 subscriber(s)" in printed
        assert "Batch of 1000 sent, 1000 deliveries" in printed

        out = wait_printed(
            subscriber,
            "Received message from news: {'type': 'breaking_news'",
            "Channel user:login: {'user_id': 1001}",
            "Channel user:logout: {'user_id': 1002}",
            "Channel user:update: {'user_id': 1003}",
            "Processing order: ORD-1",
            "Processing payment: $42.5",
            "Sending notification to user 1001: Your order has shipped",
            "Important event: disk full",
            "Received 1000 bulk updates",
        )
    assert "ignored" not in out  # the filtered-out events


def test_pubsub_guide_request_response_and_acknowledged_publishing(server_url: str) -> None:
    with running("pubsub_guide/processor.py", server_url, ready="processor") as processor:
        printed = run_script("pubsub_guide/client.py", server_url)
        assert "Received response: {'status': 'success', 'result': 5}" in printed
        assert "Message acknowledged: {'status': 'acknowledged', 'processed': 1}" in printed
        assert "Message not acknowledged: processing failed: a message needs a text" in printed
        assert "Durable request acknowledged: {'status': 'acknowledged', 'processed': 2}" in printed
        wait_printed(processor, "Processed: Hello", "Processed: kept")


def test_pubsub_guide_durable_request_waits_for_the_processor(server_url: str) -> None:
    client = redis.Redis.from_url(server_url)
    with (
        DaebusCaller("processor", redis_url=server_url, timeout=60) as caller,
        ThreadPoolExecutor(1) as pool,
    ):
        reply = pool.submit(
            caller.send_request, "process", {"text": "sent while down"}, durable=True, ttl=60
        )
        stream = protocol.request_stream_key("processor")
        wait_for(lambda: client.xlen(stream) == 1, message="the request was not queued")
        assert not reply.done()
        with running("pubsub_guide/processor.py", server_url, ready="processor") as processor:
            assert reply.result(timeout=60) == {"status": "acknowledged", "processed": 1}
            wait_printed(processor, "Processed: sent while down")
    client.close()


def test_pubsub_guide_notifications_reach_the_users_client(server_url: str) -> None:
    with (
        running("pubsub_guide/notifications.py", server_url, "1001") as user_client,
        Subscription(server_url, "notifications:all") as monitor,
    ):
        user_client.wait_ready("notifications:user:1001")
        user_client.wait_ready("notifications:broadcast")
        run_script("pubsub_guide/notifications.py", server_url, "send")
        wait_printed(
            user_client,
            "[Personal] Order Update: Your order has been shipped",
            "[Broadcast] System Maintenance: System will undergo maintenance at 10 PM tonight",
        )
        note = monitor.get_json(timeout=10)
        assert note["user_id"] == 1001
        assert re.fullmatch(r"[0-9a-f-]{36}", note["notification_id"])


def test_pubsub_guide_chat_room_delivers_to_every_member(server_url: str) -> None:
    room = "chat:room:general"
    with running("pubsub_guide/chat_room.py", server_url, "Alice", ready=room) as alice:
        with running("pubsub_guide/chat_room.py", server_url, "Bob", ready=room, count=2) as bob:
            wait_printed(alice, "*** Bob joined the chat ***")
            with DaebusCaller("chat-Alice", redis_url=server_url, timeout=10) as say:
                assert say.send_request("say", {"text": "Hello everyone!"}) == {"members": 2}
            with DaebusCaller("chat-Bob", redis_url=server_url, timeout=10) as say:
                assert say.send_request("say", {"text": "Hi Alice!"}) == {"members": 2}
            for member in (alice, bob):
                wait_printed(member, "Alice: Hello everyone!", "Bob: Hi Alice!")
            assert "*** Bob joined the chat ***" in bob.stdout()
        # Bob has stopped: he left, and Alice heard it.
        wait_printed(alice, "*** Bob left the chat ***")


def test_pubsub_guide_two_workers_share_the_tasks(
    server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks = load_example("pubsub_guide/tasks.py", monkeypatch)
    channel = "tasks:image_processing:high"
    # Submitted before any worker ever ran: done all the same (start="earliest").
    early = run_script("pubsub_guide/tasks.py", server_url, "submit")
    early_id = re.search(r"Task submitted: (\S+)", early).group(1)  # type: ignore[union-attr]

    with (
        Subscription(server_url, "tasks:completed") as completed,
        running("pubsub_guide/tasks.py", server_url) as one,
        running("pubsub_guide/tasks.py", server_url) as two,
    ):
        wait_for(
            lambda: (
                group_stats(server_url, channel)["groups"].get("image-worker", {}).get("consumers")
                == 2
            ),
            timeout=20,
            message="the two workers are not both reading",
        )
        submitted = {early_id}
        submitted |= {
            tasks.submit_task("resize", {"image_path": f"/images/{n}.jpg"}, priority="high")
            for n in range(20)
        }
        done = [completed.get_json(timeout=20) for _ in range(21)]

        ids = collections.Counter(task["id"] for task in done)
        assert set(ids) == submitted
        assert set(ids.values()) == {1}  # each task done once
        workers = collections.Counter(task["worker_id"] for task in done)
        assert len(workers) == 2, workers  # both workers took some
        assert all(task["result"] == {"status": "processed", "size": "1024x768"} for task in done)

        # A task that fails every try ends in the dead letters, with its error.
        tasks.submit_task("resize", {"no_image": True}, priority="high")
        dead = DeadLetters(channel, "image-worker", redis_url=server_url)
        letters = wait_for(dead.list, timeout=30, message="no dead letter")
        assert len(letters) == 1
        assert letters[0].data["payload"] == {"no_image": True}
        assert "image_path" in letters[0].error
        assert letters[0].deliveries == 3  # retries=2: three tries
        dead.close()
        printed = one.stdout() + two.stdout()
    assert printed.count("(try 3)") == 1


# -- Protean's Redis PubSub broker guide (003) -------------------------------------------


def shared_in_step(instances: list[Daebus], channel: str) -> None:
    """Wait until the instances know each other and number `channel`'s messages alike.

    Until then, an instance that has just joined handles every message of a shared
    listener itself (never none): see daebus.runtime.shared_listeners.
    """

    def ready() -> bool:
        return all(
            app._runtime is not None
            and len(app._runtime.instances.others) == len(instances) - 1
            and app._runtime.broadcasts.shared.in_step(channel)
            for app in instances
        )

    wait_for(ready, timeout=20, message="the instances are not in step")


def test_protean_subscribers_every_instance_or_one(
    server_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first = load_instance("protean_broker/subscribers.py", "protean_subscribers", monkeypatch)
    second = load_instance("protean_broker/subscribers.py", "protean_subscribers", monkeypatch)
    with Apps(server_url) as apps:
        for instance in (first, second):
            apps.start(instance.app, "app-events")
        shared_in_step([first.app, second.app], "metrics:*")

        printed = run_script("protean_broker/publishers.py", server_url)
        assert "notification: 2 receiver(s)" in printed  # both instances
        assert "notify_followers: [2, 2, 2]" in printed
        assert "cache invalidation: 2 receiver(s)" in printed

        # Every instance clears its own cache...
        for instance in (first, second):
            wait_for(lambda i=instance: "user:42" not in i.local_cache, message="cache kept")
            assert "user:7" in instance.local_cache
        # ... while a metric is collected by one of them.
        wait_for(lambda: first.collected or second.collected, message="metric not collected")
        publishers = load_example("protean_broker/publishers.py", monkeypatch)
        for n in range(100):
            publishers.track_api_latency(f"/items/{n}", n / 1000)

        def all_collected() -> int:
            return len(first.collected) + len(second.collected) >= 101

        wait_for(all_collected, timeout=30, message="metrics missing")
        time.sleep(QUIET)  # for a metric collected twice to show
        collected = first.collected + second.collected
        endpoints = collections.Counter(tags["endpoint"] for _, _, tags in collected)
        assert endpoints["/users"] == 1
        assert all(endpoints[f"/items/{n}"] == 1 for n in range(100)), endpoints
        assert len(collected) == 101
        assert first.collected
        assert second.collected

    out = capsys.readouterr().out
    assert out.count("Push to user 123: New Message: You have a new message!") == 2
    assert out.count("Push to user 8: New post: Ada posted") == 2
    assert out.count("Invalidated cache key: user:42") == 2


def handled(outputs: list[str | ServiceProcess], group: int) -> collections.Counter[int]:
    """How many times each order was handled by `group`, across the instances' outputs."""
    text = "".join(out if isinstance(out, str) else out.stdout() for out in outputs)
    return collections.Counter(
        int(n) for n in re.findall(rf"Group {group} processing order (\d+) ", text)
    )


def test_protean_consumer_groups_keep_their_positions(
    server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    orders = load_example("protean_broker/orders.py", monkeypatch)
    # Placed before the service ever ran: kept in the stream, no group yet.
    placed = run_script("protean_broker/orders.py", server_url, "place", "3")
    assert len(re.findall(r"order \d: message \d+-\d+", placed)) == 3
    assert group_stats(server_url, "orders") == {"length": 3, "groups": {}}

    with running("protean_broker/orders.py", server_url, ready="orders") as first:
        # Both groups start at the earliest message: the backlog is theirs.
        backlog = {1: 1, 2: 1, 3: 1}
        wait_for(lambda: handled([first], 1) == handled([first], 2) == backlog, timeout=20)
        seen: list[str | ServiceProcess] = [first.stdout()]  # what it printed, once stopped

    # While the service is down, each group's position stays where it was.
    orders.place_order(4, 40)
    orders.place_order(5, 50)
    stats = group_stats(server_url, "orders")
    assert stats["length"] == 5
    for group in ("group1", "group2"):
        assert stats["groups"][group]["lag"] == 2
        assert stats["groups"][group]["pending"] == 0
    report = json.loads(run_script("protean_broker/health.py", server_url))
    assert report["status"] == "healthy"
    assert report["channels"]["orders"]["groups"]["group1"]["lag"] == 2

    with (
        running("protean_broker/orders.py", server_url, ready="orders") as one,
        running("protean_broker/orders.py", server_url) as two,
    ):
        seen += [one, two]
        wait_for(lambda: len(handled(seen, 1)) == len(handled(seen, 2)) == 5, timeout=30)
        for n in range(6, 26):
            orders.place_order(n, 10 * n)
        expected = dict.fromkeys(range(1, 26), 1)  # each order once per group, no repeat
        wait_for(lambda: handled(seen, 1) == handled(seen, 2) == expected, timeout=30)

        # Group 1 handles the orders in the order they were placed.
        text = one.stdout() + two.stdout()
        order = [int(n) for n in re.findall(r"Group 1 processing order (\d+) ", text)]
        assert [n for n in order if n > 5] == list(range(6, 26))

        # An order that fails every try ends in each group's dead letters.
        orders.place_order(99, 0)
        for group in ("group1", "group2"):
            dead = DeadLetters("orders", group, redis_url=server_url)
            letters = wait_for(dead.list, timeout=30, message=f"no dead letter in {group}")
            assert [letter.data["order_id"] for letter in letters] == [99]
            assert "order 99 has no amount" in letters[0].error
            dead.close()
        report = json.loads(run_script("protean_broker/health.py", server_url))
        groups = report["channels"]["orders"]["groups"]
        assert groups["group1"]["dead_letters"] == groups["group2"]["dead_letters"] == 1


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


async def recv(client: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> Any:
    msg = await client.receive(timeout)
    assert msg.type is WSMsgType.TEXT, f"expected a text frame, got {msg.type!r} {msg.data!r}"
    return json.loads(msg.data)


def serve_websocket(apps: Apps, module: types.ModuleType, service: str) -> str:
    """Start an example's app with its WebSocket server on a free port; returns its URL."""
    module.websocket.port = 0
    module.websocket.host = HOST
    apps.start(module.app, service)
    return f"ws://{HOST}:{module.websocket.get_websocket_port()}/"


async def test_protean_chat_relay_to_websocket_clients(
    server_url: str, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_example("protean_broker/chat_relay.py", monkeypatch)
    with Apps(server_url) as apps:
        url = serve_websocket(apps, module, "chat-relay")
        async with (
            session.ws_connect(url + "?room=general") as ada,
            session.ws_connect(url + "?room=general") as bob,
            session.ws_connect(url + "?room=other") as eve,
        ):
            for client, room in ((ada, "general"), (bob, "general"), (eve, "other")):
                assert (await recv(client))["data"] == {"room": room}

            await ada.send_json({"type": "chat", "data": {"user_id": "ada", "message": "Hi"}})
            frames = [await recv(ada), await recv(ada)]
            by_type = {frame["type"]: frame["data"] for frame in frames}
            assert by_type["response"] == {"sent": True, "relays": 1}
            assert by_type["chat.message"]["message"] == "Hi"
            relayed = await recv(bob)
            assert relayed["type"] == "chat.message"
            assert relayed["data"]["user_id"] == "ada"

            # Any program can talk to a room by publishing on its channel.
            client = redis.Redis.from_url(server_url)
            message = {"type": "chat.message", "user_id": "bot", "message": "Hello"}
            assert client.publish("chat:other", json.dumps(message)) == 1
            client.close()
            # Eve's next frame is her room's message: she got none of "general"'s.
            assert (await recv(eve))["data"] == message


# -- the Redis pub/sub how-to (004) -------------------------------------------------------


def test_realtime_event_bus_with_a_prefix(server_url: str) -> None:
    with running("realtime_guide/event_bus.py", server_url, ready="notifications") as bus:
        wait_subscribed(server_url, "events:order.created")
        printed = run_script("realtime_guide/publisher.py", server_url)
        assert "'Hello from publisher!' reached 1" in printed
        assert "notifications has 1 subscriber(s)" in printed
        wait_printed(
            bus,
            "Received on notifications: Hello from publisher!",
            "Logged notification: Hello from publisher!",
            "Received on notifications: {'text': 'Hello, World!'}",
            "User created: {'id': 123, 'name': 'John'}",
            "User event 'user.created': {'id': 123, 'name': 'John'}",
            "User event 'user.updated': {'id': 123, 'name': 'John Doe'}",
            "Order created: {'orderId': 'ORD-123', 'total': 99.99}",
            "Order event 'order.created'",
            "Order event 'order.shipped': {'orderId': 'ORD-123', 'carrier': 'UPS'}",
        )
        assert bus.stdout().count("Logged notification:") == 3

        # Unsubscribing the pattern while the service runs.
        with DaebusCaller("event-bus", redis_url=server_url, timeout=10) as caller:
            assert caller.send_request("unsubscribe", {"channel": "events:user.*"}) == {
                "removed": True
            }
        run_script("realtime_guide/publisher.py", server_url)
        wait_for(lambda: bus.stdout().count("Order event 'order.shipped'") == 2, timeout=20)
        out = bus.stdout()
        assert out.count("User created:") == 2
        assert out.count("User event 'user.created'") == 1


def test_realtime_monitoring(server_url: str) -> None:
    broadcast.send("audit", {"who": "ada"}, durable=True)
    with running("realtime_guide/event_bus.py", server_url, ready="notifications"):
        printed = run_script("realtime_guide/monitor.py", server_url)
    assert "  notifications: 1 subscribers" in printed
    assert "  events:user.created: 1 subscribers" in printed
    assert "Pattern subscriptions: 2" in printed  # events:user.* and events:order.*
    assert "Durable channel audit: 1 messages" in printed


async def test_realtime_notifications_stored_and_bridged_to_websockets(
    server_url: str, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_example("realtime_guide/notifications.py", monkeypatch)
    with Apps(server_url) as apps:
        url = serve_websocket(apps, module, "notifier")
        caller = apps.caller("notifier", timeout=10)

        async def call(action: str, payload: dict[str, Any]) -> Any:
            return await asyncio.to_thread(caller.send_request, action, payload)

        # A client that does not say who it is is refused.
        async with session.ws_connect(url) as anonymous:
            msg = await anonymous.receive(10)
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)

        async with (
            session.ws_connect(url + "?user_id=user123") as mine,
            session.ws_connect(url + "?user_id=user456") as theirs,
        ):
            assert (await recv(mine))["data"] == {"user_id": "user123"}
            assert (await recv(theirs))["data"] == {"user_id": "user456"}

            sent = await call(
                "send_to_user",
                {"user_id": "user123", "title": "Welcome!", "message": "Thanks for signing up!"},
            )
            pushed = await recv(mine)
            assert pushed == {"type": "notification", "data": sent}

            await call("broadcast", {"type": "warning", "title": "Maintenance", "message": "1h"})
            for client in (theirs, mine):  # theirs: the broadcast is its first one
                frame = await recv(client)
                assert frame["data"]["title"] == "Maintenance"

            # Stored: the history, newest first, and marked as read.
            history = await call("get_notifications", {"user_id": "user123"})
            assert history == [sent]
            assert await call(
                "mark_as_read", {"user_id": "user123", "notification_id": sent["id"]}
            ) == {"marked": True}
            assert (await call("get_notifications", {"user_id": "user123"}))[0]["read"] is True
            assert await call("get_notifications", {"user_id": "user456"}) == []

        await wait_until(lambda: not module.users, message="clients not forgotten")


def test_examples_readme_lists_the_new_folders() -> None:
    listed = (EXAMPLES / "README.md").read_text()
    for folder in ("pubsub_guide", "protean_broker", "realtime_guide"):
        assert f"`{folder}/`" in listed
        assert any(Path(EXAMPLES / folder).glob("*.py"))
