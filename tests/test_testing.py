"""daebus.testing and its pytest plugin: a service tested with no server at all."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from daebus import (
    CallTimeoutError,
    Daebus,
    RemoteError,
    SetupError,
    broadcast,
    cache,
    request,
    response,
)
from daebus.protocol import request_stream_key
from daebus.pytest_plugin import ClientFactory
from daebus.testing import Capture, Message, TestClient, memory_url, run_app
from daebus.transport.memory import broker_for


def greeter() -> Daebus:
    app = Daebus("greeter")
    app.seen = []  # type: ignore[attr-defined]

    @app.action("hello")
    def hello() -> Any:
        name = request.payload.get("name")
        if not name:
            raise ValueError("name is required")
        cache.incr("hellos")
        broadcast.send("greetings", {"to": name})
        return {"message": f"Hello, {name}!"}

    @app.action("count")
    def count() -> Any:
        for i in range(1, request.payload["to"] + 1):
            response.send(i, final=False)
        return "done"

    @app.action("note")
    def note() -> None:
        app.seen.append(("note", request.payload))  # type: ignore[attr-defined]

    @app.listen("user:*")
    async def on_user(data: Any, channel: str) -> None:
        await asyncio.sleep(0.05)  # the client must wait for this
        app.seen.append((channel, data))  # type: ignore[attr-defined]
        await broadcast.send("audit", {"saw": channel})

    @app.on_start()
    def started() -> None:
        broadcast.send("lifecycle", "up")

    return app


def test_run_app_calls_streams_and_raises_remote_errors() -> None:
    with run_app(greeter(), service="greeter") as client:
        assert client.url.startswith("memory://daebus-test-")
        assert client.call("hello", {"name": "Ann"}) == {"message": "Hello, Ann!"}
        with pytest.raises(RemoteError, match="name is required") as caught:
            client.call("hello", {})
        assert caught.value.action == "hello"
        assert client.stream("count", {"to": 3}) == [1, 2, 3, "done"]
        assert client.cache.get("hellos") == "1"


def test_durable_calls_go_through_the_request_stream() -> None:
    with run_app(greeter(), service="greeter") as client:
        assert client.call("hello", {"name": "Bo"}, durable=True) == {"message": "Hello, Bo!"}
        assert client.stream("count", {"to": 2}, durable=True) == [1, 2, "done"]
        # Read there by the service's group (and deleted once answered).
        (group,) = broker_for(client.url).streams.groups(request_stream_key("greeter"))
        assert group["name"] == "greeter"
        assert group["last-delivered-id"] != "0-0"


def test_publish_returns_once_the_listener_ran() -> None:
    app = greeter()
    with run_app(app) as client:
        assert client.service == "greeter"
        assert client.publish("user:1", {"name": "Bo"}) == 1
        assert app.seen == [("user:1", {"name": "Bo"})]  # type: ignore[attr-defined]
        assert client.publish("nobody:1", {}) == 0
        assert client.publish("user:2", b"not json") == 1  # dropped by the app, logged


def test_send_is_fire_and_forget_and_waits_until_handled() -> None:
    app = greeter()
    with run_app(app) as client:
        assert client.send("note", {"x": 1}) == 1
        assert app.seen == [("note", {"x": 1})]  # type: ignore[attr-defined]
        assert client.broadcasts.channels == ["lifecycle"]  # no reply went anywhere


def test_broadcasts_hold_what_the_app_published_but_not_replies() -> None:
    with run_app(greeter()) as client:
        client.call("hello", {"name": "Ann"})
        client.publish("user:7", {"id": 7})
        client.stream("count", {"to": 2})

        assert client.broadcasts.channels == ["lifecycle", "greetings", "audit"]
        assert client.broadcasts.payloads == ["up", {"to": "Ann"}, {"saw": "user:7"}]
        assert client.broadcasts[1] == Message("greetings", b'{"to":"Ann"}')
        assert len(client.broadcasts) == 3


def test_capture_records_one_pattern_from_now_on() -> None:
    with run_app(greeter()) as client:
        client.call("hello", {"name": "Ann"})
        with client.capture("gree*") as greetings:
            client.publish("user:1", {})
            client.call("hello", {"name": "Bo"})
            assert greetings.wait(1) == [Message("greetings", b'{"to":"Bo"}')]
        client.call("hello", {"name": "Cy"})
        assert greetings.payloads == [{"to": "Bo"}]  # closed: no more recording
        assert greetings.closed


def test_capture_wait_for_a_message_still_to_come() -> None:
    with run_app(greeter()) as client:
        audit = client.capture("audit")
        client.publish("user:3", {}, wait=False)  # the listener is still sleeping
        message = audit.wait_for(lambda m: m.payload == {"saw": "user:3"})
        assert message.channel == "audit"
        with pytest.raises(AssertionError, match="2 message"):
            audit.wait(2, timeout=0.1)
        audit.clear()
        assert list(audit) == []


def test_capture_is_thread_safe_and_ordered() -> None:
    capture = Capture("a:*")
    threads = [
        threading.Thread(target=lambda n=n: capture._offer(Message(f"a:{n}", b"1")))
        for n in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    capture._offer(Message("b:1", b"2"))
    assert sorted(capture.channels) == sorted(f"a:{n}" for n in range(20))
    assert Message("x", b"raw").payload == b"raw"


def test_wait_idle_times_out_on_a_stuck_listener() -> None:
    app = Daebus("stuck")
    release = threading.Event()

    @app.listen("jam")
    def jam(data: Any) -> None:
        release.wait(10)

    with run_app(app) as client:
        client.publish("jam", {}, wait=False)
        started = time.monotonic()
        with pytest.raises(CallTimeoutError, match="still busy"):
            client.wait_idle(timeout=0.2)
        assert time.monotonic() - started < 5
        release.set()
        client.wait_idle()


def test_two_apps_on_one_broker_and_a_caller_for_another_service() -> None:
    prices = Daebus("prices")

    @prices.action("price")
    def price() -> int:
        return 3

    url = memory_url()
    with run_app(prices, url=url) as prices_client, run_app(greeter(), url=url) as client:
        assert client.caller("prices").send_request("price") == 3
        assert prices_client.call("price") == 3
    assert broker_for(url).numsub("prices") == 0


def test_a_client_refuses_other_urls_and_must_be_started() -> None:
    with pytest.raises(ValueError, match="memory://"):
        TestClient(greeter(), url="redis://localhost:6379/0")
    client = TestClient(greeter())
    with pytest.raises(RuntimeError, match="not started"):
        client.call("hello")
    client.close()  # idempotent, even unstarted


def test_start_failures_propagate_and_leave_nothing_running() -> None:
    app = greeter()
    with run_app(app) as first:
        second = TestClient(app, url=first.url)
        with pytest.raises(SetupError, match="already running"):
            second.start()
        assert len(first.broker._monitors) == 1  # the failed client's monitor is gone
        with pytest.raises(RuntimeError, match="already started"):
            first.start()
        assert first.call("hello", {"name": "Ann"}) == {"message": "Hello, Ann!"}
    assert not app.is_running()


def test_a_module_level_app_runs_again_in_the_next_test() -> None:
    app = greeter()
    for _ in range(2):
        with run_app(app) as client:
            assert client.call("hello", {"name": "Ann"}) == {"message": "Hello, Ann!"}
            assert client.cache.get("hellos") == "1"  # a fresh broker, a fresh cache


# -- the pytest plugin, loaded by its entry point -----------------------------------------


def test_the_plugin_is_registered(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.has_plugin("daebus")


def test_the_daebus_client_fixture(daebus_client: ClientFactory, daebus_memory_url: str) -> None:
    client = daebus_client(greeter(), "greeter")
    assert client.url == daebus_memory_url
    assert client.call("hello", {"name": "Ann"}) == {"message": "Hello, Ann!"}
    other = daebus_client(Daebus("other"))
    assert other.url == daebus_memory_url
    assert client.caller("other").connect() is not None


async def test_fixtures_work_in_async_tests(daebus_client: ClientFactory) -> None:
    client = daebus_client(greeter())
    assert client.call("hello", {"name": "Ann"}) == {"message": "Hello, Ann!"}
