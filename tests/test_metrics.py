"""Prometheus metrics: scraped over HTTP from real services, parsed by prometheus-client.

Counters must move by exactly the number of messages sent. A handler's count is bumped
as it ends, just after its reply went out: a test polls the scrape until the count is
reached, then checks that it is that count and no more.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

pytest.importorskip("prometheus_client")

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from _apps import Apps
from _helpers import unique_name, wait_for
from _http import fetch, serve
from daebus import Daebus, DaebusWebSocket, RemoteError, ServiceBusyError, SetupError, request
from daebus.runtime import metrics as runtime_metrics
from daebus.testing import TestClient

pytestmark = pytest.mark.timeout(60)

Samples = list[tuple[str, dict[str, str], float]]


def parse(text: str) -> Samples:
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def scrape(url: str) -> Samples:
    reply = fetch(url, "/metrics")
    assert reply.status == 200, reply.body
    assert (reply.header("Content-Type") or "").startswith("text/plain")
    return parse(reply.body.decode())


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    """The sum of the samples of ``metric`` whose labels include ``labels`` (0 if none)."""
    return sum(
        found
        for sample, sample_labels, found in samples
        if sample == metric and all(sample_labels.get(k) == v for k, v in labels.items())
    )


def reaches(
    read: Callable[[], Samples], metric: str, expected: float, /, **labels: str
) -> Callable[[], Samples | None]:
    def check() -> Samples | None:
        samples = read()
        return samples if value(samples, metric, **labels) >= expected else None

    return check


def settle(read: Callable[[], Samples], metric: str, expected: float, /, **labels: str) -> Samples:
    """Poll until the count reaches ``expected``, then insist that it is exactly that."""
    samples = wait_for(
        reaches(read, metric, expected, **labels),
        message=lambda: f"{metric}{labels}: {value(read(), metric, **labels)} != {expected}",
    )
    assert value(samples, metric, **labels) == expected
    return samples


RECEIVED = "daebus_messages_received_total"


def test_counters_move_by_exactly_the_calls_made(apps: Apps) -> None:
    app = Daebus("counted")
    app.enable_metrics()

    @app.action("echo")
    async def echo() -> Any:
        return request.payload

    @app.action("echo_sync")
    def echo_sync() -> Any:
        return request.payload

    @app.action("boom")
    async def boom() -> Any:
        raise ValueError("no")

    @app.route("/items/<int:item_id>")
    def item(_req: Any, item_id: int) -> Any:
        return {"id": item_id}

    http = serve(apps, app)
    service = app.service
    assert service is not None
    caller = apps.caller(service)
    for n in range(37):
        assert caller.send_request("echo", n) == n
    for n in range(5):
        assert caller.send_request("echo_sync", n) == n
    for n in range(4):
        assert caller.send_request("echo", n, durable=True) == n
    for _ in range(3):
        with pytest.raises(RemoteError, match="no"):
            caller.send_request("boom")
    for _ in range(2):
        with pytest.raises(RemoteError, match="Unknown action"):
            caller.send_request(f"nothing-{unique_name('x')}")
    for item_id in (1, 2, 30):
        assert fetch(http.url, f"/items/{item_id}").json() == {"id": item_id}
    assert fetch(http.url, "/nowhere").status == 404

    def read() -> Samples:
        return scrape(http.url)

    ok = {"service": service, "kind": "request", "status": "ok"}
    settle(read, RECEIVED, 37, name="echo", **ok)
    settle(read, RECEIVED, 5, name="echo_sync", **ok)
    settle(read, RECEIVED, 4, name="echo", kind="durable_request", status="ok")
    settle(read, RECEIVED, 3, name="boom", service=service, status="error")
    samples = settle(read, RECEIVED, 2, name="<unknown>", service=service, status="refused")
    # Each request's name is its registered action: nothing else became a label.
    names = {labels["name"] for name, labels, _ in samples if name == RECEIVED}
    assert names == {"echo", "echo_sync", "boom", "<unknown>"}
    assert value(samples, RECEIVED, service=service) == 37 + 5 + 4 + 3 + 2
    histogram = "daebus_handler_duration_seconds_count"
    assert value(samples, histogram, name="echo", kind="request") == 37
    assert value(samples, histogram, name="echo_sync") == 5
    replies = 37 + 5 + 4 + 3 + 2
    assert value(samples, "daebus_messages_published_total", kind="reply") == replies
    assert value(samples, "daebus_in_flight", service=service) == 0
    assert value(samples, "daebus_queued", service=service) == 0
    route = {"route": "/items/<int:item_id>", "method": "GET"}
    assert value(samples, "daebus_http_requests_total", status="200", **route) == 3
    assert value(samples, "daebus_http_request_duration_seconds_count", **route) == 3
    assert value(samples, "daebus_http_requests_total", route="<unknown>", status="404") == 1
    routes = {labels["route"] for name, labels, _ in samples if name.startswith("daebus_http")}
    assert routes <= {"/items/<int:item_id>", "<unknown>", "/metrics"}


def test_instances_of_a_service_count_the_calls_between_them_exactly(apps: Apps) -> None:
    service = unique_name("shared")
    started: list[Daebus] = []
    for _ in range(2):
        app = Daebus("shared")
        app.enable_metrics(port=0)

        @app.action("echo")
        def echo() -> Any:
            return request.payload

        apps.start(app, service)
        started.append(app)
    for app in started:
        runtime = app._runtime
        assert runtime is not None
        wait_for(lambda runtime=runtime: len(runtime.instances.others) == 1)
    caller = apps.caller(service)
    for n in range(60):
        assert caller.send_request("echo", n) == n
    bases = [app.metrics.url[: -len("/metrics")] for app in started]

    def read() -> Samples:
        return [sample for base in bases for sample in scrape(base)]

    samples = settle(read, RECEIVED, 60, service=service, name="echo", status="ok")
    assert value(samples, RECEIVED, service=service) == 60
    shares = [value(scrape(base), RECEIVED, name="echo") for base in bases]
    assert all(share > 0 for share in shares), shares


def test_a_busy_refusal_is_counted_and_a_port_of_its_own_serves(apps: Apps) -> None:
    app = Daebus("full", max_in_flight=1, max_queued=1)
    app.enable_metrics(port=0)
    gate = threading.Event()

    @app.action("wait")
    async def wait() -> Any:
        await asyncio.get_running_loop().run_in_executor(None, gate.wait, 10)
        return request.payload

    service = apps.start(app)
    endpoint = app.metrics
    assert endpoint.host == "127.0.0.1"
    assert endpoint.url is not None
    assert endpoint.url.endswith("/metrics")
    base = endpoint.url[: -len("/metrics")]
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
    samples = scrape(base)
    assert value(samples, "daebus_in_flight", service=service) == 1
    assert value(samples, "daebus_queued", service=service) == 1
    with pytest.raises(ServiceBusyError):
        caller.send_request("wait", 2)
    gate.set()
    for thread in threads:
        thread.join(10)
    assert sorted(results) == [0, 1]
    samples = settle(lambda: scrape(base), RECEIVED, 2, name="wait", status="ok")
    assert value(samples, RECEIVED, name="wait", status="busy") == 1


def test_a_busy_workflow_is_counted_as_a_workflow() -> None:
    app = Daebus("flows", max_in_flight=1, max_queued=1)
    registry = app.enable_metrics()
    gate = threading.Event()
    entered = threading.Event()

    @app.workflow("onboard")
    def onboard() -> Any:
        entered.set()
        gate.wait(10)
        return "done"

    with TestClient(app) as client:
        channel = f"{client.service}.workflows"
        try:
            client.publish(channel, {"workflow": "onboard", "request_id": "w0"}, wait=False)
            assert entered.wait(10)
            for n in (1, 2):  # one waits, one is refused
                client.publish(channel, {"workflow": "onboard", "request_id": f"w{n}"}, wait=False)

            def read() -> Samples:
                return parse(generate_latest(registry).decode())

            samples = settle(read, RECEIVED, 1, status="busy")
        finally:
            gate.set()
    assert value(samples, RECEIVED, kind="workflow", name="onboard", status="busy") == 1


def test_a_pattern_listener_is_labelled_with_its_pattern(apps: Apps) -> None:
    prefix = unique_name("sensors")
    pattern = f"{prefix}.*"
    failing = unique_name("alarms")
    app = Daebus("listening")
    registry = app.enable_metrics()
    seen: list[Any] = []

    @app.listen(pattern)
    async def on_reading(data: Any) -> None:
        seen.append(data)

    @app.listen(failing)
    def on_alarm(data: Any) -> None:
        raise RuntimeError("alarm listener broke")

    service = apps.start(app)
    caller = apps.caller(service)
    for n in range(4):
        caller.send_message(f"{prefix}.room{n}", n)
    for n in range(2):
        caller.send_message(failing, n)
    app.broadcast.send(f"{prefix}.hall", 4)  # from the app: counted as published

    def read() -> Samples:
        return parse(generate_latest(registry).decode())

    kind = {"service": service, "kind": "broadcast"}
    samples = settle(read, RECEIVED, 5, name=pattern, status="ok", **kind)
    samples = settle(read, RECEIVED, 2, name=failing, status="error", **kind)
    names = {labels["name"] for name, labels, _ in samples if name == RECEIVED}
    assert names == {pattern, failing}  # never the concrete channels of the pattern
    assert value(samples, "daebus_handler_duration_seconds_count", name=pattern) == 5
    assert value(samples, "daebus_messages_published_total", kind="broadcast") == 1
    assert sorted(seen) == [0, 1, 2, 3, 4]


def test_durable_retries_and_dead_letters_are_counted(apps: Apps) -> None:
    channel = unique_name("orders")
    app = Daebus("durable")
    registry = app.enable_metrics()

    @app.listen(channel, durable=True, retries=1, backoff=0.01)
    def fail(data: Any) -> None:
        raise ValueError("cannot")

    @app.listen(channel, durable=True, group="audit")
    def audit(data: Any) -> None:
        pass

    service = apps.start(app)
    app.broadcast.send(channel, {"n": 1}, durable=True)

    def read() -> Samples:
        return parse(generate_latest(registry).decode())

    group = {"service": service, "channel": channel, "group": service}
    settle(read, "daebus_durable_dead_letters_total", 1, **group)
    samples = settle(read, RECEIVED, 2, kind="durable", name=channel, status="error")
    assert value(samples, "daebus_durable_retries_total", **group) == 1
    samples = settle(read, RECEIVED, 1, kind="durable", name=channel, status="ok")
    assert value(samples, "daebus_messages_published_total", kind="durable") == 1
    # Pending and lag: asked of the server as a scrape over HTTP begins.
    endpoint = app.metrics
    runtime = app._runtime
    assert runtime is not None

    def rendered() -> Samples:
        text = asyncio.run_coroutine_threadsafe(endpoint.render(), runtime.loop).result(10)
        return parse(text.decode())

    def groups_done() -> Samples | None:
        samples = rendered()
        figures = [
            [
                (sample, found)
                for sample, labels, found in samples
                if sample in ("daebus_durable_pending", "daebus_durable_lag")
                and labels == {"service": service, "channel": channel, "group": name}
            ]
            for name in (service, "audit")
        ]
        done = [("daebus_durable_lag", 0.0), ("daebus_durable_pending", 0.0)]  # sorted
        return samples if all(sorted(found) == done for found in figures) else None

    wait_for(groups_done, message=lambda: f"{rendered()}")


def test_websocket_connections_go_up_then_down(apps: Apps) -> None:
    app = Daebus("sockets")
    app.enable_metrics()
    websocket = app.attach(DaebusWebSocket(path="/ws"))

    @app.socket("ping")
    def ping(data: Any) -> Any:
        return "pong"

    http = serve(apps, app)
    assert websocket.path == "/ws"
    service = app.service

    def read() -> Samples:
        return scrape(http.url)

    async def client() -> None:
        address = http.url.replace("http", "ws") + "/ws"
        async with aiohttp.ClientSession() as session, session.ws_connect(address) as ws:
            for _ in range(3):
                await ws.send_json({"type": "ping"})
                reply = await asyncio.wait_for(ws.receive_json(), 5)
                assert reply["data"] == "pong"
            samples = await asyncio.to_thread(read)
            assert value(samples, "daebus_websocket_connections", service=service) == 1
            assert value(samples, "daebus_websocket_messages_received_total") == 3

    asyncio.run(client())
    wait_for(
        lambda: value(read(), "daebus_websocket_connections", service=service) == 0,
        message="the connection is still counted",
    )


def test_a_lost_connection_counts_as_a_reconnect(private_apps: Apps, private_redis: Any) -> None:
    app = Daebus("reconnecting")
    registry = app.enable_metrics()

    @app.action("echo")
    async def echo() -> Any:
        return request.payload

    service = private_apps.start(app)

    def read() -> Samples:
        return parse(generate_latest(registry).decode())

    assert value(read(), "daebus_transport_reconnects_total", service=service) == 0
    private_redis.restart()
    settle(read, "daebus_transport_reconnects_total", 1, service=service)
    runtime = app._runtime
    assert runtime is not None
    wait_for(lambda: runtime.transport.receiving, timeout=10)
    caller = private_apps.caller(service)
    assert caller.send_request("echo", 1) == 1


def test_scrapes_of_a_frozen_server_answer_soon_and_share_one_read(
    private_apps: Apps, private_redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = Daebus("frozen")
    app.enable_metrics(port=0)

    @app.listen("orders", durable=True)
    def orders(_data: Any) -> None:
        pass

    service = private_apps.start(app)
    url = app.metrics.url
    base = url[: -len("/metrics")]
    pending = "daebus_durable_pending"
    assert value(scrape(base), pending, service=service, channel="orders") == 0
    assert any(name == pending for name, _, _ in scrape(base))
    reads: list[float] = []
    read_groups = runtime_metrics._read_groups

    def counted(*args: Any) -> Any:
        reads.append(time.monotonic())
        return read_groups(*args)

    monkeypatch.setattr(runtime_metrics, "_read_groups", counted)
    replies: list[tuple[int, float, Samples]] = []

    def one() -> None:
        started = time.monotonic()
        reply = fetch(base, "/metrics", timeout=20)
        replies.append((reply.status, time.monotonic() - started, parse(reply.body.decode())))

    private_redis.pause()  # connections stay open; nothing is answered
    try:
        threads = [threading.Thread(target=one) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
    finally:
        private_redis.resume()
    assert [status for status, _, _ in replies] == [200] * 12
    assert max(took for _, took, _ in replies) < 2 * runtime_metrics.DURABLE_STATS_TIMEOUT + 1
    # One read at a time, whatever the number of scrapes: one, or two if the first
    # had failed before the last scrape came.
    assert 1 <= len(reads) <= 2
    # The server could not be read: the figures are absent, not the last ones (a
    # frozen lag of 0 would look healthy).
    for _, _, samples in replies:
        assert not any(name == pending for name, _, _ in samples)
    wait_for(lambda: any(name == pending for name, _, _ in scrape(base)))


def test_metrics_can_be_kept_off_the_http_port(apps: Apps) -> None:
    # DaebusHttp binds 0.0.0.0 by default: serving /metrics there is a choice.
    app = Daebus("private_metrics")
    app.enable_metrics(port=0, http=False)

    @app.route("/hello")
    def hello(_req: Any) -> Any:
        return "hi"

    http = serve(apps, app)
    assert fetch(http.url, "/metrics").status == 404
    assert app.metrics.url is not None
    assert fetch(app.metrics.url[: -len("/metrics")], "/metrics").status == 200
    with pytest.raises(SetupError, match="nowhere"):
        Daebus("nowhere").enable_metrics(http=False)


def test_a_request_not_run_after_all_is_counted_but_not_timed() -> None:
    # A durable request a worker was free for only after its caller gave up reaches
    # the recorder as "refused": no handler ran, so no duration is observed.
    registry = CollectorRegistry()
    families = runtime_metrics.families_for(registry, runtime_metrics.DEFAULT_BUCKETS)
    recorder = runtime_metrics.Recorder(families, SimpleNamespace(service="late"))  # type: ignore[arg-type]
    started = recorder.clock()
    recorder.handled("durable_request", "work", "refused", started)
    recorder.handled("durable_request", "work", "ok", started)
    samples = parse(generate_latest(registry).decode())
    assert value(samples, RECEIVED, name="work") == 2
    assert value(samples, "daebus_handler_duration_seconds_count", name="work") == 1


def test_a_render_on_another_loop_does_not_wait_on_the_services_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = Daebus("two_loops")
    app.enable_metrics()
    gate = threading.Event()
    calls: list[int] = []

    def held(*_args: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:  # the service loop's read hangs; the other loop's answers
            gate.wait(10)
        return {}

    monkeypatch.setattr(runtime_metrics, "_read_groups", held)
    with TestClient(app):
        runtime = app._runtime
        assert runtime is not None
        endpoint = app.metrics
        try:
            on_service_loop = asyncio.run_coroutine_threadsafe(endpoint.render(), runtime.loop)
            wait_for(lambda: runtime.metrics is not None and runtime.metrics._reading is not None)
            text = asyncio.run(endpoint.render()).decode()  # a loop of its own
            assert "daebus_in_flight" in text
        finally:
            gate.set()
        assert b"daebus_in_flight" in on_service_loop.result(10)


def test_a_route_the_metrics_take_over_is_warned_of(
    apps: Apps, caplog: pytest.LogCaptureFixture
) -> None:
    app = Daebus("own_metrics")
    app.enable_metrics()

    @app.route("/metrics")
    def mine(_req: Any) -> Any:
        return "the app's own"

    caplog.set_level(logging.WARNING, logger="daebus")
    http = serve(apps, app)
    assert fetch(http.url, "/metrics").body.startswith(b"# HELP")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("route GET /metrics is not served" in line for line in warned), warned


def test_any_free_port_is_any_free_port_again_after_a_restart() -> None:
    app = Daebus("restarted")
    app.enable_metrics(port=0)
    app.add_action("hello", lambda: "hi")
    with TestClient(app) as client:
        assert client.call("hello") == "hi"
        first = app.metrics.port
    with socket.socket() as taken:  # someone else takes that port meanwhile
        taken.bind(("127.0.0.1", first))
        taken.listen()
        with TestClient(app) as client:
            assert client.call("hello") == "hi"
            assert app.metrics.port != first
            samples = scrape(app.metrics.url[: -len("/metrics")])
    assert value(samples, RECEIVED, name="hello") == 2


def test_metrics_are_off_by_default(apps: Apps) -> None:
    app = Daebus("quiet")

    @app.action("echo")
    async def echo() -> Any:
        return request.payload

    http = serve(apps, app)
    assert app.metrics is None
    assert app._runtime is not None
    assert app._runtime.metrics is None
    assert fetch(http.url, "/metrics").status == 404


def test_metrics_on_the_memory_transport() -> None:
    app = Daebus("inventory")
    registry = app.enable_metrics()

    @app.action("stock")
    def stock() -> Any:
        return {"apples": request.payload}

    with TestClient(app) as client:
        for n in range(5):
            assert client.call("stock", n) == {"apples": n}
        settle(
            lambda: parse(generate_latest(registry).decode()),
            RECEIVED,
            5,
            service="inventory",
            name="stock",
            status="ok",
        )


def test_two_instances_on_one_registry_give_one_sample_per_series() -> None:
    # Two instances of a service in one process, on a shared registry: two samples of
    # one series would be a broken exposition; their slots add up instead.
    registry = CollectorRegistry()
    gates = [threading.Event(), threading.Event()]
    started = threading.Semaphore(0)
    apps = []
    for gate in gates:
        app = Daebus("twin")
        app.enable_metrics(registry=registry)

        def hold(gate: threading.Event = gate) -> Any:
            started.release()
            gate.wait(10)
            return "done"

        app.add_action("hold", hold)
        apps.append(app)
    service = unique_name("twin")
    with TestClient(apps[0], service=service) as one, TestClient(apps[1], service=service):
        threads = [
            threading.Thread(target=one.call, args=("hold",), kwargs={"timeout": 20})
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        try:
            for _ in range(2):
                assert started.acquire(timeout=10)
            text = generate_latest(registry).decode()
        finally:
            for gate in gates:
                gate.set()
            for thread in threads:
                thread.join(20)
    samples = parse(text)
    series = [(name, tuple(sorted(labels.items()))) for name, labels, _ in samples]
    assert len(series) == len(set(series))
    assert value(samples, "daebus_in_flight", service=service) == 2


def test_the_global_registry_and_one_switch() -> None:
    app = Daebus("global")
    assert app.enable_metrics(registry=REGISTRY) is REGISTRY
    with pytest.raises(SetupError, match="on already"):
        app.enable_metrics()

    @app.action("hello")
    async def hello() -> Any:
        return "hi"

    with TestClient(app, service=unique_name("global")) as client:
        with pytest.raises(SetupError, match="before the service starts"):
            app.enable_metrics()
        assert client.call("hello") == "hi"
        settle(
            lambda: parse(generate_latest(REGISTRY).decode()),
            RECEIVED,
            1,
            service=client.service,
            name="hello",
        )


def test_handler_durations_fall_in_their_buckets_and_counts_survive_threads() -> None:
    registry = CollectorRegistry()
    families = runtime_metrics.families_for(registry, (0.001, 0.01, 0.1))
    recorder = runtime_metrics.Recorder(families, SimpleNamespace(service="timed"))  # type: ignore[arg-type]
    now = recorder.clock()
    for elapsed in (0.0005, 0.001, 0.005, 0.05, 0.5):  # a bound is in its own bucket
        recorder.handled("request", "work", "ok", now - elapsed)

    def many() -> None:
        for _ in range(2_000):
            recorder.handled("request", "busy_one", "ok", recorder.clock())
            recorder.published("reply")

    threads = [threading.Thread(target=many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    samples = parse(generate_latest(registry).decode())
    bucket = "daebus_handler_duration_seconds_bucket"
    cumulative = [value(samples, bucket, name="work", le=le) for le in ("0.001", "0.01", "0.1")]
    assert cumulative[0] in (1, 2)  # 0.001 itself may measure a hair over its bound
    assert cumulative[1:] == [3, 4]
    assert value(samples, bucket, name="work", le="+Inf") == 5
    assert value(samples, "daebus_handler_duration_seconds_sum", name="work") >= 0.5565
    assert value(samples, RECEIVED, name="busy_one") == 8_000
    assert value(samples, "daebus_messages_published_total", kind="reply") == 8_000
