"""A service and its callers over a real server: replies, streams, errors, bad input.

A test named ``test_b<n>_...`` shows one of 0.0.31's bugs fixed; docs/compatibility.md
lists each bug with its test.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import decimal
import json
import sys
import threading
import time
import uuid
from typing import Any

import pytest
import redis

from _apps import Apps
from _helpers import QUIET, Subscription, unique_name, wait_for
from daebus import (
    AsyncDaebusCaller,
    Blueprint,
    CallTimeoutError,
    Daebus,
    RemoteError,
    ServiceBusyError,
    ServiceUnavailableError,
    broadcast,
    get_daemon,
    request,
    response,
)
from daebus.context import current_context


def raw_request(url: str, service: str, message: Any, *, raw: bytes | None = None) -> Any:
    """Publish a hand-made request and return the first reply on its reply channel."""
    reply_to = f"caller:{uuid.uuid4()}"
    if isinstance(message, dict):
        message = {**message, "reply_to": reply_to}
    with Subscription(url, reply_to) as sub:
        client = redis.Redis.from_url(url)
        try:
            client.publish(service, raw if raw is not None else json.dumps(message))
        finally:
            client.close()
        return sub.get_json(timeout=5)


def echo_app() -> Daebus:
    app = Daebus("echo")

    @app.action("echo")
    def echo() -> Any:
        return response.send(request.payload)

    return app


# -- replies ------------------------------------------------------------------------
def test_plain_reply_return_value_and_async_handler(apps: Apps) -> None:
    app = Daebus("replies")

    @app.action("send")
    def send() -> Any:
        return response.send({"got": request.payload})

    @app.action("returned")
    def returned() -> Any:
        return [request.payload, "returned"]

    @app.action("nothing")
    def nothing() -> None:
        pass

    @app.action("async_send")
    async def async_send() -> None:
        await asyncio.sleep(0)
        await response.send({"async": request.payload})

    @app.action("async_return")
    async def async_return() -> Any:
        return {"async_return": request.payload}

    caller = apps.caller(apps.start(app))
    assert caller.send_request("send", {"a": 1}) == {"got": {"a": 1}}
    assert caller.send_request("returned", 5) == [5, "returned"]
    assert caller.send_request("nothing") is None
    assert caller.send_request("async_send", "x") == {"async": "x"}
    assert caller.send_request("async_return", [1]) == {"async_return": [1]}


def test_streamed_reply_arrives_in_order(apps: Apps) -> None:
    app = Daebus("stream")

    @app.action("sends")
    def sends() -> Any:
        for i in range(20):
            response.send({"i": i}, final=False)
        return response.send({"done": True})

    @app.action("progress")
    def progress() -> Any:
        response.progress({"step": 1}, progress_percentage=150)
        response.progress("half", progress_percentage=50)
        return "finished"

    @app.action("generator")
    def generator() -> Any:
        for i in range(3):
            yield {"g": i}
        return {"total": 3}

    @app.action("async_generator")
    async def async_generator() -> Any:
        for i in range(3):
            yield i

    @app.action("async_sends")
    async def async_sends() -> None:
        for i in range(20):
            response.send(i, final=False)  # not awaited: order is still kept
        response.send("last")

    service = apps.start(app)
    caller = apps.caller(service)
    parts: list[Any] = []
    assert caller.send_request("sends", on_progress=parts.append) == {"done": True}
    assert parts == [{"i": i} for i in range(20)]
    assert list(caller.stream("progress")) == [
        {"step": 1, "progress_percentage": 100.0},
        {"data": "half", "progress_percentage": 50.0},
        "finished",
    ]
    assert list(caller.stream("generator")) == [{"g": 0}, {"g": 1}, {"g": 2}, {"total": 3}]
    assert list(caller.stream("async_generator")) == [0, 1, 2, None]
    assert list(caller.stream("async_sends")) == [*range(20), "last"]


def test_streams_of_def_actions_running_together_keep_their_order(
    apps: Apps, monkeypatch: pytest.MonkeyPatch
) -> None:
    # While other def actions run, a worker hands its final reply to the loop, which
    # writes it on another connection than the parts the worker sent itself.
    from daebus.runtime.publisher import Publisher

    handed_over: list[str] = []
    original = Publisher._publish_handed_over

    def spy(self: Publisher, channel: str, data: bytes) -> None:
        handed_over.append(channel)
        original(self, channel, data)

    monkeypatch.setattr(Publisher, "_publish_handed_over", spy)
    callers = 6
    together = threading.Barrier(callers, timeout=10)
    app = Daebus("streams", max_workers=callers)

    @app.action("parts")
    def parts() -> Any:
        together.wait()
        for i in range(30):
            response.send(i, final=False)
        return "end"

    caller = apps.caller(apps.start(app))
    results: list[list[Any]] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(list(caller.stream("parts", timeout=20)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert results == [[*range(30), "end"]] * callers
    assert handed_over  # the hand-over was taken (all but the last to finish take it)


def test_timeout_is_per_part_of_a_stream(apps: Apps) -> None:
    app = Daebus("slowstream")

    @app.action("slow")
    def slow() -> Any:
        for i in range(4):
            time.sleep(0.3)  # the work before each part
            response.send(i, final=False)
        return "done"

    caller = apps.caller(apps.start(app), timeout=1)
    # 1.2 s in all, but never more than 0.3 s between two parts.
    assert caller.send_request("slow") == "done"


def test_async_caller(apps: Apps) -> None:
    service = apps.start(echo_app())

    async def main() -> tuple[Any, list[Any]]:
        async with AsyncDaebusCaller(service, redis_url=apps.url) as caller:
            results = await asyncio.gather(
                *(caller.send_request("echo", {"n": n}) for n in range(50))
            )
            assert [r["n"] for r in results] == list(range(50))
            with pytest.raises(RemoteError, match="Unknown action 'nope'"):
                await caller.send_request("nope")
            return await caller.send_request("echo", "x"), [p async for p in caller.stream("echo")]

    assert asyncio.run(main()) == ("x", [{}])


# -- every failure gets a prompt error reply, and nothing dies -------------------------
def test_b1_handler_exception_is_an_error_reply(apps: Apps) -> None:
    app = Daebus("raises")

    @app.action("boom")
    def boom() -> None:
        raise ValueError("kaboom")

    @app.action("async_boom")
    async def async_boom() -> None:
        raise KeyError("missing")

    @app.action("bare")
    def bare() -> None:
        raise RuntimeError

    @app.action("after_parts")
    def after_parts() -> None:
        response.send(1, final=False)
        raise ValueError("half way")

    caller = apps.caller(apps.start(app), timeout=30)
    with pytest.raises(RemoteError, match=r"^kaboom$") as info:
        caller.send_request("boom")
    assert info.value.action == "boom"
    with pytest.raises(RemoteError, match="missing"):
        caller.send_request("async_boom")
    with pytest.raises(RemoteError, match=r"^RuntimeError$"):
        caller.send_request("bare")
    parts: list[Any] = []
    with pytest.raises(RemoteError, match="half way"):
        caller.send_request("after_parts", on_progress=parts.append)
    assert parts == [1]


def test_a_handler_raising_keyboard_interrupt_does_not_stop_the_service(apps: Apps) -> None:
    # Ctrl-C reaches a service as a signal, or as its task's cancellation: one raised
    # by a handler is that handler's failure.
    app = Daebus("interrupts")

    @app.action("interrupt")
    async def interrupt() -> None:
        raise KeyboardInterrupt("from an action")

    heard = threading.Event()

    @app.listen("interrupts.events")
    async def listener(_message: Any) -> None:
        heard.set()
        raise KeyboardInterrupt("from a listener")

    caller = apps.caller(apps.start(app), timeout=30)
    with pytest.raises(RemoteError, match="from an action"):
        caller.send_request("interrupt")
    assert caller.send_message("interrupts.events", {"n": 1}) == 1
    assert heard.wait(10)
    with pytest.raises(RemoteError, match="from an action"):  # still serving
        caller.send_request("interrupt")
    assert app.is_running()


def test_a_handler_raising_system_exit_does_not_stop_the_service(apps: Apps) -> None:
    app = Daebus("exits")
    app.add_action("exit", lambda: sys.exit(3))

    @app.action("async_exit")
    async def async_exit() -> None:
        raise SystemExit(4)

    @app.listen("exits.events")
    async def listener(_message: Any) -> None:
        raise SystemExit(5)

    caller = apps.caller(apps.start(app), timeout=30)
    with pytest.raises(RemoteError, match=r"^3$"):
        caller.send_request("exit")
    with pytest.raises(RemoteError, match=r"^4$"):
        caller.send_request("async_exit")
    assert caller.send_message("exits.events", {"n": 1}) == 1
    with pytest.raises(RemoteError, match=r"^3$"):  # still serving
        caller.send_request("exit")


def test_b1_unknown_and_missing_action(apps: Apps) -> None:
    service = apps.start(echo_app())
    caller = apps.caller(service, timeout=30)
    with pytest.raises(RemoteError, match=f"Unknown action 'nope' for service '{service}'"):
        caller.send_request("nope")
    reply = raw_request(apps.url, service, {"payload": {}, "request_id": "r1"})
    assert reply == {
        "status": "error",
        "payload": {"error": "request has no action"},
        "request_id": "r1",
        "final": True,
    }
    reply = raw_request(apps.url, service, {"action": 7, "request_id": "r2"})
    assert reply["status"] == "error"
    assert "action must be a string" in reply["payload"]["error"]


def test_b1_unserialisable_reply_is_an_error_reply(apps: Apps) -> None:
    app = Daebus("unserialisable")

    @app.action("send_object")
    def send_object() -> Any:
        return response.send({"when": object()})

    @app.action("return_object")
    def return_object() -> Any:
        return {"lock": threading.Lock()}

    caller = apps.caller(apps.start(app), timeout=30)
    with pytest.raises(RemoteError, match="not JSON serializable"):
        caller.send_request("send_object")
    with pytest.raises(RemoteError, match="could not encode the reply"):
        caller.send_request("return_object")


@pytest.mark.parametrize(
    "garbage",
    [b"not json", b"\xff\xfe\x00invalid utf-8", b"[1, 2, 3]", b'"a string"', b"{"],
    ids=["text", "non-utf8", "list", "string", "truncated"],
)
def test_b1_malformed_messages_do_not_kill_the_service(apps: Apps, garbage: bytes) -> None:
    service = apps.start(echo_app())
    client = redis.Redis.from_url(apps.url)
    try:
        assert client.publish(service, garbage) == 1
    finally:
        client.close()
    assert apps.caller(service).send_request("echo", {"still": "alive"}) == {"still": "alive"}


def test_oversized_request_is_refused_with_an_error(apps: Apps) -> None:
    app = echo_app()
    app.max_message_size = 1000
    service = apps.start(app)
    reply = raw_request(apps.url, service, {"action": "echo", "payload": "x" * 2000})
    assert reply["status"] == "error"
    assert "over the 1000-byte limit" in reply["payload"]["error"]
    assert apps.caller(service).send_request("echo", "small") == "small"


def test_string_payload_and_flat_shape_are_tolerated(apps: Apps) -> None:
    service = apps.start(echo_app())
    reply = raw_request(apps.url, service, {"action": "echo", "payload": '{"a": 1}'})
    assert reply["payload"] == {"a": 1}
    reply = raw_request(apps.url, service, {"action": "echo", "payload": "plain text"})
    assert reply["payload"] == "plain text"
    reply = raw_request(apps.url, service, {"action": "echo", "x": 1, "y": [2]})
    assert reply["payload"] == {"x": 1, "y": [2]}


def test_no_subscriber_fails_fast_and_a_slow_handler_times_out(apps: Apps) -> None:
    with pytest.raises(ServiceUnavailableError, match="reached no one"):
        apps.caller(unique_name("nobody"), timeout=30).send_request("x")
    app = Daebus("slow")
    release = threading.Event()

    @app.action("slow")
    def slow() -> str:
        release.wait(5)
        return "late"

    caller = apps.caller(apps.start(app))
    with pytest.raises(CallTimeoutError, match=r"timed out after 0\.2s") as info:
        caller.send_request("slow", timeout=0.2)
    assert isinstance(info.value, TimeoutError)
    release.set()


# -- futures; the first final reply wins ------------------------------------------
def test_b4_first_final_reply_wins(apps: Apps) -> None:
    app = Daebus("finals")

    @app.action("twice")
    def twice() -> None:
        response.send({"first": 1})
        response.send({"second": 2})

    caller = apps.caller(apps.start(app))
    assert caller.send_request("twice") == {"first": 1}
    assert caller.pending_requests == {}


# -- no leakage between concurrent requests -------------------------------------
def test_b5_concurrent_requests_each_get_their_own_payload(apps: Apps) -> None:
    app = Daebus("concurrent", max_workers=20)

    @app.action("echo_slowly")
    def echo_slowly() -> None:
        seen = app.request.payload
        time.sleep(0.001 * (seen["n"] % 5))  # interleave handlers
        assert request.payload is seen
        app.response.success({"n": seen["n"], "id": request.request_id})

    @app.action("async_echo")
    async def async_echo() -> Any:
        seen = request.payload
        await asyncio.sleep(0.001 * (seen["n"] % 5))
        return {"n": request.payload["n"], "app_n": app.request.payload["n"]}

    caller = apps.caller(apps.start(app))
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def worker(start: int) -> None:
        for n in range(start, 200, 8):
            try:
                action = "echo_slowly" if n % 2 else "async_echo"
                results[n] = caller.send_request(action, {"n": n}, timeout=20)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert sorted(results) == list(range(200))
    for n, result in results.items():
        assert result["n"] == n
        if "app_n" in result:
            assert result["app_n"] == n


def test_a_late_reply_to_a_timed_out_call_is_not_taken_for_the_next_one(apps: Apps) -> None:
    app = Daebus("late")
    release, answered = threading.Event(), threading.Event()

    @app.action("slow")
    def slow() -> None:
        release.wait(5)
        response.send("late")
        answered.set()

    app.add_action("fast", lambda: "fast")
    caller = apps.caller(apps.start(app))
    assert caller.send_request("fast") == "fast"  # the caller's own connection from now on
    with pytest.raises(CallTimeoutError):
        caller.send_request("slow", timeout=0.2)
    release.set()
    wait_for(answered.is_set)  # the late reply is on its way, ahead of the next call's
    assert [caller.send_request("fast") for _ in range(3)] == ["fast"] * 3
    assert caller.pending_requests == {}


# -- one Redis for everything -------------------------------------------------------
def test_b3_broadcast_and_cache_use_the_services_server(
    private_redis: Any, private_apps: Apps
) -> None:
    app = Daebus("one-redis")

    @app.action("announce")
    def announce() -> int:
        request_count = broadcast.send("announcements", {"hello": request.payload})
        app.cache.set("announced", "yes")
        return int(request_count)

    service = private_apps.start(
        app, redis_url=None, redis_host="127.0.0.1", redis_port=private_redis.port
    )
    with Subscription(private_redis.url, "announcements") as sub:
        assert private_apps.caller(service).send_request("announce", "x") == 1
        assert sub.get_json() == {"hello": "x"}
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    assert client.get("announced") == "yes"
    client.close()


def test_broadcast_outside_any_app_sends_and_sends_many(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Plain scripts publish on $DAEBUS_REDIS_URL, one message or a batch in one round trip.
    monkeypatch.setenv("DAEBUS_REDIS_URL", redis_url)
    channel = unique_name("plain-script")
    with Subscription(redis_url, channel) as sub:
        assert broadcast.send(channel, {"n": 0}) == 1
        assert broadcast.send_many([(channel, {"n": n}) for n in range(1, 301)]) == [1] * 300
        assert broadcast.send_many([(unique_name("nobody"), {"n": -1})]) == [0]
        assert [sub.get_json()["n"] for _ in range(301)] == list(range(301))
    app = Daebus("not-running")  # an app that is not running publishes the same way
    assert app.broadcast.send(unique_name("nobody"), [1]) == 0
    assert app.broadcast.send_many([(unique_name("nobody"), [2])]) == [0]


# -- listeners -------------------------------------------------------------------------
def test_listeners_channels_patterns_and_bad_messages(apps: Apps) -> None:
    app = Daebus("listeners")
    seen: list[Any] = []
    prefix = unique_name("ev")

    @app.listen(f"{prefix}.plain")
    def plain(data: Any) -> None:
        seen.append(("plain", data, request.channel))

    @app.listen(f"{prefix}:*")
    def pattern(data: Any, channel: str) -> None:
        seen.append(("pattern", data, channel))

    @app.listen(f"{prefix}.async")
    async def asynchronous(data: Any) -> None:
        seen.append(("async", data, request.channel))

    apps.start(app)
    publisher = redis.Redis.from_url(apps.url)
    try:
        assert publisher.publish(f"{prefix}.plain", b"not json") == 1
        assert publisher.publish(f"{prefix}.plain", json.dumps({"a": 1})) == 1
        assert publisher.publish(f"{prefix}:x", json.dumps([1, 2])) == 1
        assert publisher.publish(f"{prefix}.async", json.dumps("s")) == 1
    finally:
        publisher.close()
    wait_for(lambda: len(seen) == 3, message=f"three deliveries, got {seen}")
    assert sorted(seen, key=str) == sorted(
        [
            ("plain", {"a": 1}, f"{prefix}.plain"),
            ("pattern", [1, 2], f"{prefix}:x"),
            ("async", "s", f"{prefix}.async"),
        ],
        key=str,
    )


def test_listener_added_while_running_is_subscribed(apps: Apps) -> None:
    app = Daebus("late")
    apps.start(app)
    got = threading.Event()
    channel = unique_name("late")
    app.add_listener(channel, lambda data: got.set())
    assert broadcast.send(channel, {"x": 1}) == 1
    assert got.wait(5)


# -- one-way messages reach the action -------------------------------------------
def test_b7_b8_send_to_service_and_send_message_reach_the_action(apps: Apps) -> None:
    app = Daebus("oneway")
    got: list[Any] = []

    @app.action("log_event")
    def log_event() -> None:
        got.append(("log_event", request.payload))

    @app.action("record_metric")
    def record_metric() -> None:
        got.append(("record_metric", request.payload))

    service = apps.start(app)
    caller = apps.caller(service)
    assert caller.send_to_service({"level": "info"}, action="log_event") == 1
    metric_channel = unique_name("record_metric")
    app.add_action(metric_channel, record_metric)
    assert caller.send_message(metric_channel, {"name": "api_request"}) == 1
    wait_for(lambda: len(got) == 2)
    assert sorted(got, key=str) == [
        ("log_event", {"level": "info"}),
        ("record_metric", {"name": "api_request"}),
    ]
    # With a listener on the channel, send_message is a plain broadcast.
    with Subscription(apps.url, metric_channel) as sub:
        assert caller.send_message(metric_channel, {"v": 2}) == 1
        assert sub.get_json() == {"v": 2}
    time.sleep(QUIET)  # an absence window: a wrong extra delivery to the action
    assert len(got) == 2


# -- workflows --------------------------------------------------------------------
def test_b9_workflow_messages_are_handled(apps: Apps) -> None:
    app = Daebus("workflows")

    @app.workflow("onboard")
    def onboard() -> Any:
        return {"onboarded": request.payload}

    service = apps.start(app)
    reply = raw_request(
        apps.url, f"{service}.workflows", {"workflow": "onboard", "payload": 1, "request_id": "w"}
    )
    assert reply["payload"] == {"onboarded": 1}


# -- several apps in one process -----------------------------------------------------
def test_b13_two_apps_in_one_process(apps: Apps) -> None:
    first, second = Daebus("first"), Daebus("second")
    for app in (first, second):

        @app.action("whoami")
        def whoami() -> str:
            return str(get_daemon().name)

    one, two = apps.start(first), apps.start(second)
    assert apps.caller(one).send_request("whoami") == "first"
    assert apps.caller(two).send_request("whoami") == "second"


# -- one encoder for everything ----------------------------------------------------
def test_b20_one_encoder_for_replies_and_broadcasts(apps: Apps) -> None:
    app = Daebus("encoder")
    when = datetime.datetime(2024, 1, 2, 3, 4, 5)
    value = {
        "when": when,
        "day": when.date(),
        "price": decimal.Decimal("19.99"),
        "raw": b"bytes",
        "id": uuid.UUID(int=1),
        "tags": {"a"},
    }
    expected = {
        "when": "2024-01-02T03:04:05",
        "day": "2024-01-02",
        "price": 19.99,
        "raw": "bytes",
        "id": "00000000-0000-0000-0000-000000000001",
        "tags": ["a"],
    }
    channel = unique_name("enc")

    @app.action("value")
    def reply() -> Any:
        broadcast.send(channel, value)
        return response.send(value)

    service = apps.start(app)
    with Subscription(apps.url, channel) as sub:
        assert apps.caller(service).send_request("value") == expected
        assert sub.get_json() == expected


# -- blueprints, hooks, context --------------------------------------------------------
def test_blueprint_actions_listeners_and_hooks(apps: Apps) -> None:
    bp = Blueprint("users")
    events: list[Any] = []
    channel = unique_name("user_events")

    @bp.action("get_user")
    def get_user() -> Any:
        return {"id": request.payload.get("id"), "name": "Example User"}

    @bp.listen(channel)
    def on_user_event(data: Any) -> None:
        events.append(data)

    @bp.on_start()
    def started() -> None:
        events.append("started")

    app = Daebus("bp")
    assert app.register_blueprint(bp) is app
    service = apps.start(app)
    assert events == ["started"]
    assert apps.caller(service).send_request("get_user", {"id": 7}) == {
        "id": 7,
        "name": "Example User",
    }
    broadcast.send(channel, {"type": "user_created"})
    wait_for(lambda: len(events) == 2)
    assert events[1] == {"type": "user_created"}


def test_context_outside_handlers() -> None:
    from daebus import ContextError

    with pytest.raises(ContextError, match="Daebus not initialized"):
        get_daemon()
    with pytest.raises(ContextError):
        request.payload  # noqa: B018
    with pytest.raises(ContextError):
        response.send({})


def test_async_handlers_at_the_in_flight_limit_can_await_other_services(apps: Apps) -> None:
    inner = Daebus("inner")
    inner.add_action("double", lambda: request.payload * 2)
    inner_service = apps.start(inner)
    outer = Daebus("outer", max_in_flight=2)

    @outer.action("via_inner")
    async def via_inner() -> Any:
        # The caller's replies must not wait behind the requests the limit holds back.
        async with AsyncDaebusCaller(inner_service) as caller:
            await asyncio.sleep(0.05)
            return await caller.send_request("double", request.payload)

    caller = apps.caller(apps.start(outer), timeout=10)
    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda n=n: results.append(caller.send_request("via_inner", n)))
        for n in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert sorted(results) == [0, 2, 4, 6, 8, 10]


def test_async_thread_task_gets_running(apps: Apps) -> None:
    app = Daebus("async-thread")
    beats: list[int] = []

    @app.thread("beat")
    async def beat(running: Any) -> None:
        while running():
            beats.append(1)
            await asyncio.sleep(0.01)

    apps.start(app)
    wait_for(lambda: len(beats) >= 3)
    assert app.stop_thread("beat") is True


def test_publishing_on_a_closed_transport_fails_instead_of_hanging(redis_url: str) -> None:
    from daebus import TransportError
    from daebus.transport import RedisTransport

    async def main() -> None:
        transport = RedisTransport(redis_url)
        await transport.connect()
        assert await transport.publish(unique_name("nobody"), b"{}") == 0
        await transport.close()
        with pytest.raises(TransportError, match="is closed"):
            await asyncio.wait_for(transport.publish_nowait("x", b"{}"), 5)

    asyncio.run(main())


@pytest.mark.parametrize(
    "raw",
    [
        b'{"action": "echo", "payload": {"a": 1,, "reply_to": "REPLY", "request_id": "r9"}',
        b'{"action": "echo", "payload": "\xff\xfe", "reply_to": "REPLY", "request_id": "r9"}',
    ],
    ids=["malformed-json", "non-utf8"],
)
def test_b1_malformed_request_with_a_readable_reply_to_gets_an_error(
    apps: Apps, raw: bytes
) -> None:
    service = apps.start(echo_app())
    reply_to = f"caller:{uuid.uuid4()}"
    with Subscription(apps.url, reply_to) as sub:
        client = redis.Redis.from_url(apps.url)
        try:
            client.publish(service, raw.replace(b"REPLY", reply_to.encode()))
        finally:
            client.close()
        reply = sub.get_json(timeout=5)
    assert reply["status"] == "error"
    assert reply["request_id"] == "r9"
    assert reply["payload"]["error"].startswith("malformed request: not valid UTF-8 JSON")
    assert apps.caller(service).send_request("echo", 1) == 1


def test_async_handlers_run_inside_a_task_from_their_first_line(apps: Apps) -> None:
    # asyncio.timeout, TaskGroup and many client libraries need the current task.
    app = Daebus("in-a-task")
    seen: list[bool] = []

    @app.action("timed")
    async def timed() -> str:
        seen.append(asyncio.current_task() is not None)
        return await asyncio.wait_for(asyncio.sleep(0, "ok"), 5)

    @app.listen(unique_name("tasks"))
    async def on_message(data: Any) -> None:
        seen.append(asyncio.current_task() is not None)

    channel = next(iter(app.listen_handlers))
    caller = apps.caller(apps.start(app))
    assert caller.send_request("timed") == "ok"
    assert caller.send_message(channel, {"n": 1}) == 1
    wait_for(lambda: len(seen) == 2)
    assert seen == [True, True]


def test_a_message_task_starts_as_itself_in_its_own_context() -> None:
    # Eagerly where Python provides it (3.12's eager_start): the first step runs inside
    # start_task. Before 3.12 it is a plain task, started on the loop's next turn.
    from daebus.runtime.eager import start_task

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="outside")
    seen: list[tuple[asyncio.Task[Any] | None, str]] = []

    async def work() -> None:
        seen.append((asyncio.current_task(), var.get()))
        var.set("inside")
        await asyncio.sleep(0)
        seen.append((asyncio.current_task(), var.get()))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        started: asyncio.Future[tuple[asyncio.Task[None], int]] = loop.create_future()

        def from_a_callback() -> None:  # as the transport's reader calls it
            task = start_task(loop, work())
            started.set_result((task, len(seen)))

        loop.call_soon(from_a_callback)
        task, steps_run = await started
        await task
        assert steps_run == (1 if sys.version_info >= (3, 12) else 0)
        assert seen == [(task, "outside"), (task, "inside")]
        assert var.get() == "outside"

    asyncio.run(main())


def test_a_listeners_request_is_made_once_even_when_threads_share_it(apps: Apps) -> None:
    # The request and response of a broadcast are made on first use; threads given
    # the listener's context all see the same ones.
    app = Daebus("lazy-request")
    seen: list[Any] = []
    channel = unique_name("lazy")

    @app.listen(channel)
    async def on_message(data: Any) -> None:
        def read() -> tuple[Any, Any]:
            ctx = current_context()
            assert ctx is not None
            return ctx.request, ctx.response

        seen.extend(await asyncio.gather(*(asyncio.to_thread(read) for _ in range(8))))

    caller = apps.caller(apps.start(app))
    assert caller.send_message(channel, {"n": 1}) == 1
    wait_for(lambda: len(seen) == 8)
    assert len({id(request) for request, _ in seen}) == 1
    assert len({id(response) for _, response in seen}) == 1
    assert seen[0][0].channel == channel
    assert seen[0][0].payload == {"n": 1}


# -- load shedding, reply channels, bounded echoes ----------------------------------------
def test_a_request_past_the_queue_is_refused_at_once_with_a_busy_reply(apps: Apps) -> None:
    app = Daebus("full", max_in_flight=1, max_queued=1)
    gate = threading.Event()

    @app.action("wait")
    async def wait() -> Any:
        await asyncio.get_running_loop().run_in_executor(None, gate.wait, 10)
        return request.payload

    service = apps.start(app)
    caller = apps.caller(service, timeout=30)
    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda n=n: results.append(caller.send_request("wait", n)))
        for n in range(2)  # one runs, one waits
    ]
    for thread in threads:
        thread.start()
    runtime = app._runtime
    assert runtime is not None
    wait_for(lambda: runtime.active == 1 and runtime.queued == 1)
    began = time.monotonic()
    with pytest.raises(ServiceBusyError, match="is busy") as refused:
        caller.send_request("wait", 2)
    assert time.monotonic() - began < 15  # at once, not at the caller's timeout
    assert refused.value.payload == {"error": str(refused.value), "code": "busy"}
    # The wire form: 0.0.31's error reply, which its callers read as the message.
    reply = raw_request(apps.url, service, {"action": "wait", "request_id": "r3"})
    assert reply["status"] == "error"
    assert reply["final"] is True
    assert reply["request_id"] == "r3"
    assert reply["payload"]["code"] == "busy"
    assert "the request was not run" in reply["payload"]["error"]
    gate.set()
    for thread in threads:
        thread.join(10)
    assert sorted(results) == [0, 1]


def test_replies_go_only_to_reply_channels(apps: Apps, caplog: pytest.LogCaptureFixture) -> None:
    app = Daebus("reflector", reply_channels=["myapp.replies.*"])
    ran: list[Any] = []
    events = unique_name("events")

    @app.action("stream")
    async def stream() -> Any:
        ran.append(request.payload)
        for part in range(3):
            await response.send(part, final=False)
        return "done"

    @app.listen(events)
    async def on_event(data: Any) -> None:
        await response.send({"seen": data})  # to the broadcast's reply_to, if it may

    service = apps.start(app)
    victim = unique_name("victim")
    forbidden = [victim, f"{victim}.responses", service, events, "None.responses"]
    allowed = [f"caller_{uuid.uuid4().hex}", f"myapp.replies.{uuid.uuid4().hex}"]
    caller = apps.caller(service, timeout=30)
    client = redis.Redis.from_url(apps.url)
    with Subscription(apps.url, *forbidden, *allowed, f"{service}.responses") as sub:
        try:
            for channel in forbidden:
                message = {"action": "stream", "payload": channel, "reply_to": channel}
                client.publish(service, json.dumps(message))
                client.publish(events, json.dumps({"reply_to": channel, "n": 1}))
            for junk in (None, ["x"], {"a": 1}, victim):  # no reply_to: <service>.responses
                message = {"action": "stream", "payload": "bare", "service": junk}
                client.publish(service, json.dumps(message))
            for channel in allowed:
                message = {"action": "stream", "payload": channel, "reply_to": channel}
                client.publish(service, json.dumps(message))
            bare = {"action": "stream", "payload": "bare", "service": service}
            client.publish(service, json.dumps(bare))
        finally:
            client.close()
        # Handled in order: once this is answered, everything before it was handled.
        assert caller.send_request("stream", "last") == "done"
        got: list[tuple[str, Any]] = []
        while True:
            try:
                channel, data = sub.get(timeout=QUIET)  # an absence window: no more replies
            except AssertionError:
                break
            message = json.loads(data)
            if "status" in message:  # a reply: not one of the test's own messages
                got.append((channel, message["payload"]))
    published = {channel for channel, _ in got}
    assert published == {*allowed, f"{service}.responses"}, got
    assert [payload for channel, payload in got if channel == allowed[0]] == [0, 1, 2, "done"]
    # Without reply_to, the parts and the returned value go to <service>.responses: for the
    # request whose service field is null and for the one naming this service (the two
    # run side by side, so their parts interleave).
    responses = [payload for channel, payload in got if channel.endswith(".responses")]
    assert sorted(map(str, responses)) == sorted(map(str, [0, 1, 2, "done"] * 2))
    # A request whose reply_to is refused is not run at all; one without runs.
    assert sorted(map(str, ran)) == sorted(map(str, ["bare"] * 5 + allowed + ["last"]))
    refusals = [r for r in caplog.records if "unrun: its reply_to" in r.getMessage()]
    assert len(refusals) == 1  # then counted, not logged each time


def test_a_huge_action_name_is_echoed_and_logged_cut_short(
    apps: Apps, caplog: pytest.LogCaptureFixture
) -> None:
    service = apps.start(echo_app())
    name = "n" * (5 * 1024 * 1024)
    reply = raw_request(apps.url, service, {"action": name, "request_id": "r1"})
    error = reply["payload"]["error"]
    assert error.startswith(f"Unknown action '{'n' * 200}... (5242880 characters)'")
    assert len(json.dumps(reply)) < 1000
    # An id too long to echo: the request is dropped, not answered with it.
    caller = apps.caller(service, timeout=30)
    raw_request_id = {"action": "echo", "request_id": "i" * 5000, "reply_to": "caller:x"}
    client = redis.Redis.from_url(apps.url)
    try:
        client.publish(service, json.dumps(raw_request_id))
    finally:
        client.close()
    assert caller.send_request("echo", "still here") == "still here"
    assert max(len(record.getMessage()) for record in caplog.records) < 1000


def test_junk_is_logged_once_a_period_then_counted(
    apps: Apps, caplog: pytest.LogCaptureFixture
) -> None:
    app = echo_app()

    @app.action("fail")
    def fail() -> None:
        raise ValueError("always")

    service = apps.start(app)
    caller = apps.caller(service, timeout=30)
    client = redis.Redis.from_url(apps.url)
    try:
        for n in range(50):
            client.publish(service, b"junk %d" % n)
            client.publish(service, json.dumps({"action": f"nope{n}", "reply_to": "caller:x"}))
    finally:
        client.close()
    for _ in range(5):
        with pytest.raises(RemoteError, match="always"):
            caller.send_request("fail")
    app.stop()  # the counts held back are logged as it stops
    lines = [record.getMessage() for record in caplog.records]
    for what in ("cannot be answered", "Unknown action", "action 'fail'"):
        matching = [line for line in lines if what in line]
        assert len(matching) == 2, matching  # the first, then how many more
        assert matching[1].startswith(("49 more like this", "4 more like this")), matching
    # The count ends with the latest line held back, not the first again.
    (unknown_count,) = [line for line in lines if "Unknown action" in line and "more like" in line]
    assert "nope49" in unknown_count
    assert "nope0" not in unknown_count
    tracebacks = [r for r in caplog.records if r.exc_info and "fail" in r.getMessage()]
    assert len(tracebacks) == 1
