"""OpenTelemetry tracing: spans of calls, handlers and broadcasts, and the context on the wire.

Every test has a TracerProvider of its own, exporting to memory, and real services on
the test server (some on the memory transport too): a chain of calls across services
is one trace, a failure is an error span, durable messages and HTTP requests continue
the trace they came from, and a request without a context (or with a broken one)
starts a new trace. Off, nothing of it is on the wire.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from _apps import Apps
from _helpers import Subscription, unique_name, wait_for
from _http import fetch, serve
from daebus import (
    AsyncDaebusCaller,
    Daebus,
    DaebusCaller,
    RemoteError,
    SetupError,
    broadcast,
    request,
)
from daebus.caller._messages import log_reply
from daebus.protocol import decode_object, decode_reply, encode_request
from daebus.pubsub import PubSubRequest
from daebus.testing import TestClient
from daebus.tracing import Tracing

pytestmark = pytest.mark.timeout(60)


class Spans:
    """A TracerProvider whose finished spans are kept in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def finished(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str, timeout: float = 5.0) -> ReadableSpan:
        """The finished span called ``name`` (waiting for it: servers end theirs late)."""

        def found() -> ReadableSpan | None:
            return next((span for span in self.finished() if span.name == name), None)

        return wait_for(found, timeout, message=lambda: f"no span {name!r} in {self.names()}")

    def names(self) -> list[str]:
        return [span.name for span in self.finished()]


@pytest.fixture
def spans() -> Iterator[Spans]:
    kept = Spans()
    yield kept
    kept.provider.shutdown()


def _traced(name: str, spans: Spans) -> Daebus:
    app = Daebus(name)
    app.enable_tracing(spans.provider)
    return app


def _is_child(child: ReadableSpan, parent: ReadableSpan) -> bool:
    assert child.context is not None
    assert parent.context is not None
    return (
        child.parent is not None
        and child.parent.span_id == parent.context.span_id
        and child.context.trace_id == parent.context.trace_id
    )


def _raw_request(url: str, service: str, envelope: dict[str, Any], timeout: float = 5.0) -> Any:
    """Publish ``envelope`` with plain redis-py, as any JSON client would; its reply."""
    reply_to = f"caller:{unique_name('bare')}"
    with Subscription(url, reply_to) as replies:
        client = redis.Redis.from_url(url)
        try:
            client.publish(service, json.dumps({**envelope, "reply_to": reply_to}))
        finally:
            client.close()
        return replies.get_json(timeout)


# -- a chain of calls ---------------------------------------------------------------------
def test_a_three_hop_chain_is_one_trace(where: Apps, spans: Spans) -> None:
    """client -> A (async def, async caller) -> B (def, blocking caller) -> C."""
    a_name, b_name, c_name = (unique_name(n) for n in ("hop-a", "hop-b", "hop-c"))
    a, b, c = _traced("hop_a", spans), _traced("hop_b", spans), _traced("hop_c", spans)
    to_c = DaebusCaller(c_name, redis_url=where.url)
    current: dict[str, int] = {}  # the span current in each handler, as it runs

    @c.action("c")
    async def in_c() -> str:
        current["c"] = trace.get_current_span().get_span_context().span_id
        return "c"

    @b.action("b")
    def in_b() -> str:  # in a worker thread: the span must reach the caller there
        current["b"] = trace.get_current_span().get_span_context().span_id
        return "b" + to_c.send_request("c")

    @a.action("a")
    async def in_a() -> str:
        async with AsyncDaebusCaller(b_name) as to_b:
            return "a" + await to_b.send_request("b")

    where.start(c, c_name)
    where.start(b, b_name)
    where.start(a, a_name)
    client = where.caller(a_name, tracing=True, tracer_provider=spans.provider)
    try:
        assert client.send_request("a") == "abc"
    finally:
        to_c.close()

    call_a = spans.named(f"send {a_name}.a")
    serve_a = spans.named(f"process {a_name}.a")
    call_b = spans.named(f"send {b_name}.b")
    serve_b = spans.named(f"process {b_name}.b")
    call_c = spans.named(f"send {c_name}.c")
    serve_c = spans.named(f"process {c_name}.c")
    assert call_a.parent is None
    assert call_a.kind is SpanKind.CLIENT
    assert serve_a.kind is SpanKind.SERVER
    chain = [call_a, serve_a, call_b, serve_b, call_c, serve_c]
    for parent, child in itertools.pairwise(chain):
        assert _is_child(child, parent), (child.name, parent.name)
    assert len({span.context.trace_id for span in chain if span.context}) == 1
    attributes = serve_b.attributes or {}
    assert attributes["messaging.system"] == "redis"
    assert attributes["messaging.destination.name"] == b_name
    assert attributes["daebus.action"] == "b"
    assert all(span.status.status_code is StatusCode.UNSET for span in chain)
    assert serve_b.context is not None
    assert serve_c.context is not None
    assert current == {"b": serve_b.context.span_id, "c": serve_c.context.span_id}


def test_a_failing_handler_gives_an_error_span_and_an_error_reply(apps: Apps, spans: Spans) -> None:
    app = _traced("failing", spans)

    @app.action("boom")
    def boom() -> None:
        raise ValueError("it broke")

    service = apps.start(app)
    client = apps.caller(service, tracing=True, tracer_provider=spans.provider)
    with pytest.raises(RemoteError, match="it broke"):
        client.send_request("boom")
    served = spans.named(f"process {service}.boom")
    assert served.status.status_code is StatusCode.ERROR
    assert any(event.name == "exception" for event in served.events)
    called = spans.named(f"send {service}.boom")
    assert called.status.status_code is StatusCode.ERROR
    assert _is_child(served, called)


async def test_an_async_caller_error_reply_marks_its_span(apps: Apps, spans: Spans) -> None:
    app = _traced("async_failing", spans)

    @app.action("no")
    async def no() -> None:
        raise RuntimeError("refused")

    service = apps.start(app)
    async with AsyncDaebusCaller(
        service, redis_url=apps.url, tracing=True, tracer_provider=spans.provider
    ) as client:
        with pytest.raises(RemoteError, match="refused"):
            await client.send_request("no")
    called = spans.named(f"send {service}.no")
    assert called.status.status_code is StatusCode.ERROR
    assert spans.named(f"process {service}.no").status.status_code is StatusCode.ERROR


class _UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_a_failure_that_cannot_be_printed_is_answered_and_traced(spans: Spans) -> None:
    app = _traced("unprintable", spans)

    @app.action("on_loop")
    async def on_loop() -> None:
        raise _UnprintableError

    @app.action("in_worker")
    def in_worker() -> None:
        raise _UnprintableError

    with TestClient(app, timeout=10) as client:
        for action in ("on_loop", "in_worker"):
            with pytest.raises(RemoteError, match="_UnprintableError"):
                client.call(action)
            served = spans.named(f"process {client.service}.{action}")
            assert served.status.status_code is StatusCode.ERROR
            assert served.status.description == "_UnprintableError"


def test_streamed_replies_are_one_client_span(apps: Apps, spans: Spans) -> None:
    app = _traced("streaming", spans)

    @app.action("count")
    def count() -> Any:
        yield from range(3)

    service = apps.start(app)
    client = apps.caller(service, tracing=True, tracer_provider=spans.provider)
    assert list(client.stream("count")) == [0, 1, 2, None]
    called = spans.named(f"send {service}.count")
    assert _is_child(spans.named(f"process {service}.count"), called)
    assert called.status.status_code is StatusCode.UNSET


def test_a_request_wanting_no_reply_continues_the_handlers_trace(apps: Apps, spans: Spans) -> None:
    notes: list[Any] = []
    sink_name = unique_name("notes")
    sink = _traced("notes", spans)
    sink.add_action("note", lambda: notes.append(request.payload))
    source = _traced("noter", spans)
    to_sink = DaebusCaller(sink_name, redis_url=apps.url)

    @source.action("work")
    def work() -> str:
        to_sink.send_to_service({"done": 1}, action="note")
        return "ok"

    apps.start(sink, sink_name)
    service = apps.start(source)
    try:
        assert apps.caller(service).send_request("work") == "ok"
        wait_for(lambda: notes)
    finally:
        to_sink.close()
    assert notes == [{"done": 1}]
    sent = spans.named(f"send {sink_name}.note")
    assert sent.kind is SpanKind.PRODUCER
    assert _is_child(sent, spans.named(f"process {service}.work"))
    assert _is_child(spans.named(f"process {sink_name}.note"), sent)


# -- durable messages and requests --------------------------------------------------------
def test_a_durable_request_continues_the_callers_trace(where: Apps, spans: Spans) -> None:
    app = _traced("durable_traced", spans)

    @app.action("add")
    def add() -> int:
        return int(request.payload["a"]) + 1

    service = where.start(app)
    client = where.caller(service, tracing=True, tracer_provider=spans.provider)
    assert client.send_request("add", {"a": 1}, durable=True) == 2
    called = spans.named(f"send {service}.add")
    served = spans.named(f"process {service}.add")
    assert _is_child(served, called)
    assert (served.attributes or {})["daebus.durable"] is True
    assert (called.attributes or {})["daebus.durable"] is True


def test_a_durable_message_continues_the_publishers_trace(where: Apps, spans: Spans) -> None:
    channel = unique_name("traced-orders")
    received: list[Any] = []
    listener = _traced("durable_listener", spans)

    @listener.listen(channel, durable=True)
    def on_order(data: Any) -> None:
        received.append(data)

    publisher = _traced("durable_publisher", spans)

    @publisher.action("order")
    def order() -> str:
        message_id: str = broadcast.send(channel, {"item": 7}, durable=True)
        return message_id

    where.start(listener)
    service = where.start(publisher)
    client = where.caller(service, tracing=True, tracer_provider=spans.provider)
    assert client.send_request("order")
    wait_for(lambda: received)
    assert received == [{"item": 7}]  # the trace context is not in the message
    served = spans.named(f"process {service}.order")
    produced = spans.named(f"publish {channel}")
    consumed = spans.named(f"process {channel}")
    assert produced.kind is SpanKind.PRODUCER
    assert consumed.kind is SpanKind.CONSUMER
    assert _is_child(produced, served)
    assert _is_child(consumed, produced)
    assert (consumed.attributes or {})["messaging.consumer.group.name"]


def test_a_durable_batch_is_one_producer_span(apps: Apps, spans: Spans) -> None:
    channel = unique_name("traced-batch")
    received: list[Any] = []
    listener = _traced("batch_listener", spans)
    listener.add_listener(channel, received.append, durable=True)
    publisher = _traced("batch_publisher", spans)

    @publisher.action("send")
    def send() -> int:
        return len(broadcast.send_many([(channel, {"n": 1}), (channel, {"n": 2})], durable=True))

    apps.start(listener)
    service = apps.start(publisher)
    assert apps.caller(service).send_request("send") == 2
    wait_for(lambda: len(received) == 2)
    produced = spans.named(f"publish {channel}")
    assert (produced.attributes or {})["messaging.batch.message_count"] == 2
    wait_for(lambda: spans.names().count(f"process {channel}") == 2)
    consumed = [span for span in spans.finished() if span.name == f"process {channel}"]
    assert all(_is_child(span, produced) for span in consumed)


def test_a_plain_broadcast_is_a_new_trace_and_its_data_is_untouched(
    apps: Apps, spans: Spans
) -> None:
    channel = unique_name("traced-news")
    received: list[Any] = []
    listener = _traced("plain_listener", spans)

    @listener.listen(channel)
    def on_news(data: Any) -> None:
        received.append(data)

    publisher = _traced("plain_publisher", spans)

    @publisher.action("tell")
    def tell() -> int:
        count: int = broadcast.send(channel, {"news": 1})
        return count

    apps.start(listener)
    service = apps.start(publisher)
    assert apps.caller(service).send_request("tell") == 1
    wait_for(lambda: received)
    assert received == [{"news": 1}]
    produced = spans.named(f"publish {channel}")
    consumed = spans.named(f"process {channel}")
    assert _is_child(produced, spans.named(f"process {service}.tell"))
    assert consumed.parent is None  # a plain broadcast has nowhere to carry the context


# -- HTTP and WebSocket -------------------------------------------------------------------
def test_an_http_request_joins_the_trace_its_header_names(apps: Apps, spans: Spans) -> None:
    app = _traced("http_traced", spans)

    @app.route("/items/<int:item>")
    def item(req: Any, item: int) -> Any:
        return {"item": item}

    @app.route("/fail")
    def fail(req: Any) -> Any:
        raise RuntimeError("no")

    http = serve(apps, app)
    base = f"http://127.0.0.1:{http.port}"
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {"traceparent": f"00-{trace_id}-{parent_id}-01"}
    assert fetch(base, "/items/5", headers=headers).json() == {"item": 5}
    served = spans.named("GET /items/<int:item>")
    assert served.kind is SpanKind.SERVER
    assert served.context is not None
    assert served.parent is not None
    assert f"{served.context.trace_id:032x}" == trace_id
    assert f"{served.parent.span_id:016x}" == parent_id
    assert (served.attributes or {})["http.response.status_code"] == 200
    assert fetch(base, "/fail").status == 500
    failed = spans.named("GET /fail")
    assert failed.parent is None
    assert failed.status.status_code is StatusCode.ERROR


# -- requests without a context, or with a broken one -------------------------------------
@pytest.mark.parametrize(
    "trace",
    [
        {},
        {"traceparent": "garbage"},
        {"traceparent": 12, "tracestate": ["x"]},
        {"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"},
        {"traceparent": "0" * 5000},
    ],
    ids=["none", "garbage", "not-strings", "zero-trace-id", "huge"],
)
def test_a_request_without_a_valid_context_starts_a_new_trace(
    apps: Apps, spans: Spans, trace: dict[str, Any]
) -> None:
    app = _traced("plain_json", spans)
    app.add_action("echo", lambda: request.payload)
    service = apps.start(app)
    envelope = {"action": "echo", "payload": {"x": 1}, "request_id": "r-1", "service": service}
    reply = _raw_request(apps.url, service, {**envelope, **trace})
    assert reply["status"] == "success"
    assert reply["payload"] == {"x": 1}
    served = spans.named(f"process {service}.echo")
    assert served.parent is None
    assert served.context is not None
    assert served.context.trace_id != 0


def test_a_valid_context_from_any_client_is_continued(apps: Apps, spans: Spans) -> None:
    app = _traced("context_from_json", spans)
    app.add_action("echo", lambda: request.payload)
    service = apps.start(app)
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    envelope = {
        "action": "echo",
        "payload": {"x": 1},
        "request_id": "r-2",
        "service": service,
        "traceparent": f"00-{trace_id}-b7ad6b7169203331-01",
        "tracestate": "vendor=value",
    }
    reply = _raw_request(apps.url, service, envelope)
    assert reply["payload"] == {"x": 1}  # the trace keys are not the payload's
    served = spans.named(f"process {service}.echo")
    assert served.context is not None
    assert f"{served.context.trace_id:032x}" == trace_id
    assert served.context.trace_state.get("vendor") == "value"


@pytest.mark.parametrize(
    "state",
    [
        "vendor=value\n2026-12-07 ERROR forged log line",
        ",".join(f"k{n}=v" for n in range(40)),
        "k=" + "v" * 900,
        "1vendor=value",
    ],
    ids=["not-w3c", "too-many-members", "long-value", "key-of-a-digit"],
)
def test_a_forged_tracestate_is_dropped_quietly(
    spans: Spans, state: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Anyone who can publish on a service's channel picks these keys: what they send
    # must not reach the logs, once per message, through OpenTelemetry's warnings.
    tracing = Tracing(spans.provider)
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    parent = f"00-{trace_id}-b7ad6b7169203331-01"
    caplog.set_level(logging.DEBUG, logger="opentelemetry")
    for fields in (
        {"traceparent": parent, "tracestate": state},
        {"traceparent": parent + "-" + "f" * 600},
    ):
        context = trace.get_current_span(tracing.parent(fields)).get_span_context()
        if "tracestate" in fields:
            assert f"{context.trace_id:032x}" == trace_id
            assert not context.trace_state
        else:
            assert not context.is_valid
    assert [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")] == []


def test_a_well_formed_tracestate_is_kept_whole(spans: Spans) -> None:
    tracing = Tracing(spans.provider)
    fields = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "t1@sys=a b, ,rojo=00f067aa0ba902b7",
    }
    context = trace.get_current_span(tracing.parent(fields)).get_span_context()
    assert dict(context.trace_state) == {"t1@sys": "a b", "rojo": "00f067aa0ba902b7"}


# -- off ------------------------------------------------------------------------------------
def test_off_nothing_is_on_the_wire_and_the_runtime_has_no_tracing(apps: Apps) -> None:
    app = Daebus("untraced")
    app.add_action("echo", lambda: request.payload)
    service = apps.start(app)
    assert app._runtime is not None
    assert app._runtime.tracing is None
    assert app.tracing is None
    with Subscription(apps.url, service) as requests:
        assert apps.caller(service).send_request("echo", {"a": 1}) == {"a": 1}
        sent = requests.get_json()
    assert set(sent) == {"action", "payload", "reply_to", "request_id", "service"}


def test_a_traced_call_carries_the_context_at_the_top_of_the_envelope(
    apps: Apps, spans: Spans
) -> None:
    app = Daebus("untraced_service")
    app.add_action("echo", lambda: request.payload)
    service = apps.start(app)
    client = apps.caller(service, tracing=True, tracer_provider=spans.provider)
    with Subscription(apps.url, service) as requests:
        assert client.send_request("echo", {"a": 1}) == {"a": 1}
        sent = requests.get_json()
    assert sent["payload"] == {"a": 1}
    assert sent["traceparent"].startswith("00-")
    called = spans.named(f"send {service}.echo")
    assert called.context is not None
    assert f"{called.context.trace_id:032x}" in sent["traceparent"]


def test_the_trace_keys_are_ignored_by_the_request_decoder() -> None:
    """What a 0.0.31 service does too: the keys stay in ``raw``, the payload is untouched."""
    data = encode_request(
        "echo",
        {"a": 1},
        "caller:x",
        "r-3",
        "svc",
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )
    message = decode_object(data)
    assert list(message)[:5] == ["action", "payload", "reply_to", "request_id", "service"]
    parsed = PubSubRequest(message)
    assert parsed.payload == {"a": 1}
    assert (parsed.action, parsed.reply_to, parsed.request_id) == ("echo", "caller:x", "r-3")
    assert "traceparent" in parsed.raw
    assert decode_object(encode_request("echo", {}, None, "r", "svc")).keys() == {
        "action",
        "payload",
        "reply_to",
        "request_id",
        "service",
    }


def test_without_opentelemetry_enabling_tracing_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [name for name in sys.modules if name.startswith("opentelemetry")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # import fails
    with pytest.raises(SetupError, match=r"daebus\[tracing\]"):
        Daebus("no_otel").enable_tracing()
    with pytest.raises(SetupError):
        DaebusCaller("anyone", tracing=True)


# -- debug logging of what is sent --------------------------------------------------------
def test_debug_logs_the_messages_sent(apps: Apps, caplog: pytest.LogCaptureFixture) -> None:
    channel = unique_name("debug-news")
    app = Daebus("debug_out")

    @app.action("tell")
    def tell() -> str:
        broadcast.send(channel, {"news": 1})
        return "told"

    caplog.set_level(logging.DEBUG, logger="daebus.flow")
    try:
        service = apps.start(app, debug=True)
        client = apps.caller(service)
        assert client.send_request("tell") == "told"

        def lines() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.name == "daebus.flow"]

        def has(prefix: str) -> Callable[[], bool]:
            return lambda: any(line.startswith(prefix) for line in lines())

        wait_for(has(f"=> {service} tell request_id="), message=lambda: str(lines()))
        wait_for(has("<= caller:"), message=lambda: str(lines()))
        wait_for(has(f"=> {channel} (broadcast)"), message=lambda: str(lines()))
        assert any(" success request_id=" in line and "final=True" in line for line in lines())
    finally:
        logging.getLogger("daebus").setLevel(logging.NOTSET)


def test_debug_lines_escape_what_came_off_the_wire(caplog: pytest.LogCaptureFixture) -> None:
    # A request's id and reply_to, and a reply's status and id, are the sender's to
    # choose: a debug line must not end where they say and start a forged one.
    app = Daebus("debug_in")
    app.add_action("echo", lambda: request.payload)
    caplog.set_level(logging.DEBUG, logger="daebus.flow")
    with TestClient(app) as client:
        forged = {"request_id": "r\nFORGED", "reply_to": "caller:x\nFORGED"}
        client.publish(client.service, {"action": "echo", "payload": 1, **forged})
        log_reply(
            "svc", decode_reply(json.dumps({"status": "x\nFORGED", "request_id": "y\nFORGED"}))
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "daebus.flow"]
    assert any(line.startswith("-> ") for line in lines), lines
    assert any(line.startswith("<= ") for line in lines), lines
    assert any(line.startswith("<- svc ") for line in lines), lines
    assert not [line for line in lines if "\n" in line]


def test_enable_tracing_is_refused_while_running(apps: Apps, spans: Spans) -> None:
    app = Daebus("late")
    app.add_action("echo", lambda: request.payload)
    apps.start(app)
    with pytest.raises(SetupError):
        app.enable_tracing(spans.provider)


def test_a_websocket_message_gets_a_server_span(apps: Apps, spans: Spans) -> None:
    aiohttp = pytest.importorskip("aiohttp")
    from daebus import DaebusWebSocket

    app = _traced("ws_traced", spans)
    websocket = app.attach(DaebusWebSocket(port=0, host="127.0.0.1"))

    @app.socket("ping")
    def ping(data: Any) -> Any:
        return {"pong": True}

    apps.start(app)

    async def talk() -> Any:
        url = f"ws://127.0.0.1:{websocket.get_websocket_port()}/"
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as client:
            await client.send_json({"type": "ping", "data": {}})
            return await asyncio.wait_for(client.receive_json(), 5)

    assert asyncio.run(talk()) == {"type": "response", "data": {"pong": True}}
    served = spans.named("websocket ping")
    assert served.kind is SpanKind.SERVER
