"""The dashboard: its observer of the bus on a real server, its API, and its guard.

The observer is fed by a real server (a PSUBSCRIBE of everything) and by hand, where a
test needs to say what time it is; the API is driven with aiohttp's test client and,
for the command, on a real port.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from _apps import Apps
from _helpers import ServiceProcess, unique_name, wait_for, wait_until
from daebus import Daebus, broadcast, request, response
from daebus.dashboard import Dashboard, Guard, _snapshot, is_loopback, serve
from daebus.dashboard._latency import LatencyTable
from daebus.dashboard._observer import MAX_DECODED, BusObserver
from daebus.dashboard._snapshot import clip
from daebus.dashboard._traffic import OVERFLOW, REPLIES, TrafficTable
from daebus.transport import transport_from_url

pytestmark = pytest.mark.timeout(60)

TOKEN = "correct-horse-battery-staple"


def make_app() -> Daebus:
    app = Daebus("dash")

    @app.action("echo")
    def echo() -> Any:
        return request.payload

    @app.action("count")
    def count() -> Any:
        for i in range(3):
            response.send({"part": i}, final=False)
        return {"parts": 3}

    @app.action("fail")
    def fail() -> Any:
        raise ValueError("the warehouse is on fire")

    return app


@pytest.fixture
def service(apps: Apps) -> str:
    return apps.start(make_app())


@pytest.fixture
async def observer(redis_url: str) -> AsyncIterator[BusObserver]:
    watcher = BusObserver()
    async with transport_from_url(redis_url) as transport:
        await watcher.start(transport)
        try:
            yield watcher
        finally:
            await watcher.stop()


def row_of(observer: BusObserver, channel: str) -> dict[str, Any] | None:
    return next((r for r in observer.traffic.rows() if r["channel"] == channel), None)


def action_of(observer: BusObserver, service: str, action: str) -> dict[str, Any] | None:
    rows = observer.latency.rows()
    return next((r for r in rows if (r["service"], r["action"]) == (service, action)), None)


# -- the observer, on a real server ------------------------------------------------------


async def test_the_observer_counts_every_message_of_a_channel(
    observer: BusObserver, redis_client: redis.Redis
) -> None:
    channel = unique_name("dash-traffic")
    for i in range(25):
        redis_client.publish(channel, json.dumps({"n": i}))
    row = await wait_until(lambda: (r := row_of(observer, channel)) and r["messages"] == 25 and r)
    assert row["kind"] == "plain"
    assert row["bytes"] == sum(len(json.dumps({"n": i})) for i in range(25))
    observer.tick()
    await asyncio.sleep(0.05)
    observer.tick()  # nothing since: the rate falls to 0
    assert row_of(observer, channel)["rate"] == 0  # type: ignore[index]


async def test_requests_are_matched_to_their_replies(
    observer: BusObserver, service: str, apps: Apps
) -> None:
    caller = apps.caller(service)
    for i in range(5):
        await asyncio.to_thread(caller.send_request, "echo", {"i": i})
    parts: list[Any] = []
    await asyncio.to_thread(caller.send_request, "count", {}, on_progress=parts.append)
    with pytest.raises(Exception, match="on fire"):
        await asyncio.to_thread(caller.send_request, "fail", {})

    echo = await wait_until(
        lambda: (r := action_of(observer, service, "echo")) and r["replies"] == 5 and r
    )
    assert echo["calls"] == 5
    assert echo["errors"] == 0
    assert 0 < echo["p50"] <= echo["p90"] <= echo["p99"] <= echo["max"]
    count = await wait_until(
        lambda: (r := action_of(observer, service, "count")) and r["replies"] and r
    )
    assert count["parts"] == 3
    fail = await wait_until(
        lambda: (r := action_of(observer, service, "fail")) and r["errors"] and r
    )
    assert fail["errors"] == 1
    assert "on fire" in fail["last_error"]
    assert observer.latency.pending == 0
    # Each caller's reply channel is one row: the table does not grow with the callers.
    assert row_of(observer, REPLIES) is not None
    assert not [r for r in observer.traffic.rows() if r["channel"].startswith("caller:")]


async def test_hostile_traffic_keeps_the_tables_bounded(
    observer: BusObserver, redis_client: redis.Redis
) -> None:
    observer.traffic.max_channels = 50
    observer.latency.max_pending = 20
    observer.latency.max_actions = 10
    prefix = unique_name("junk")
    pipe = redis_client.pipeline(transaction=False)
    for i in range(200):  # more channels than the table holds
        pipe.publish(f"{prefix}:{i}", b"\x00\xff\xfe binary")
    for i in range(100):  # requests never answered, for made-up actions
        envelope = {
            "action": f"a{i}",
            "payload": {},
            "reply_to": f"caller:{i}",
            "request_id": str(i),
            "service": "x",
        }
        pipe.publish(f"{prefix}-svc", json.dumps(envelope))
    pipe.publish(f"{prefix}\n\x1b[31mred\x00", b"{not json")
    pipe.publish("x" * 5000, b"long name")
    pipe.publish(f"{prefix}-huge", b"{" + b" " * (MAX_DECODED + 10))
    pipe.publish(f"{prefix}-deep", b"[" * 100_000)
    pipe.publish(f"{prefix}-deep-object", b'{"a":' * 5000 + b"1" + b"}" * 5000)
    pipe.execute()
    marker = unique_name("after-junk")
    redis_client.publish(marker, b"still counting")
    # Only the marker's channel may be in the overflow row: the table was full before it.
    await wait_until(lambda: row_of(observer, OVERFLOW) and observer.traffic.messages >= 306)
    assert len(observer.traffic) <= 50 + 2
    assert observer.latency.pending <= 20
    assert observer.latency.dropped >= 80
    assert len(observer.latency.rows()) <= 10 + 1
    assert observer.undecoded == 1
    assert observer.not_json >= 1
    for row in observer.traffic.rows():
        assert len(row["channel"]) < 300
        assert row["channel"].isprintable()
    assert observer.receiving


def test_reply_channels_share_a_row_and_long_names_are_cut() -> None:
    table = TrafficTable(max_channels=3)
    for channel in ("caller:1", "caller:2", "caller_3", "shop.responses"):
        table.count(channel, 1, 0.0)
    assert [r["channel"] for r in table.rows()] == [REPLIES]
    table.count("é" * 1000, 1, 0.0)
    table.count("a\tb", 1, 0.0)
    names = [r["channel"] for r in table.rows()]
    assert all(len(n) < 260 and n.isprintable() for n in names), names
    table.count("one too many", 1, 0.0)
    assert OVERFLOW in [r["channel"] for r in table.rows()]
    table.tick(0.0)
    table.tick(1000.0)  # silent for long: forgotten
    assert len(table) == 0


def test_a_request_without_a_reply_expires() -> None:
    table = LatencyTable(expire_after=60)
    request = {"action": "stock", "reply_to": "caller:a", "request_id": "1", "service": "inv"}
    table.request("inv", request, 0.0)
    table.request("inv", {**request, "request_id": "2"}, 30.0)
    table.tick(61.0)
    assert table.pending == 1
    table.reply("caller:a", {"status": "success", "request_id": "1", "final": True}, 62.0)
    [row] = table.rows()
    assert row["unanswered"] == 1
    assert row["replies"] == 0
    table.reply("caller:a", {"status": "success", "request_id": "2"}, 30.25)
    [row] = table.rows()
    assert row["replies"] == 1
    assert row["p50"] == 250.0
    # A request without reply_to is answered on <service>.responses.
    table.request("inv", {**request, "reply_to": None, "request_id": "3"}, 40.0)
    table.reply(
        "inv.responses", {"status": "error", "request_id": "3", "payload": {"error": "no"}}, 40.5
    )
    [row] = table.rows()
    assert row["errors"] == 1
    assert row["last_error"] == "no"


def test_clip_cuts_what_an_entry_holds() -> None:
    value = {"s": "x" * 1000, "l": list(range(500)), "deep": [[[[[["bottom"]]]]]], 3: object()}
    kept = clip(value)
    assert len(kept["s"]) < 260
    assert len(kept["l"]) == 101
    assert "bottom" not in json.dumps(kept)
    assert isinstance(kept["3"], str)


# -- the API -----------------------------------------------------------------------------


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[TestClient[Any, Any]]:
    dashboard = Dashboard(redis_url)
    async with TestClient(TestServer(dashboard.make_app())) as test_client:
        yield test_client


@pytest.fixture
async def guarded(redis_url: str) -> AsyncIterator[TestClient[Any, Any]]:
    dashboard = Dashboard(redis_url, token=TOKEN)
    async with TestClient(TestServer(dashboard.make_app())) as test_client:
        yield test_client


def test_services_list_what_their_instances_run_once() -> None:
    listener = {"channel": "events", "durable": False, "shared": False}
    reordered = {"shared": False, "durable": False, "channel": "events"}
    entries = [
        {"service": "a", "instance": "1", "actions": ["x", "y"], "listeners": [listener]},
        {"service": "a", "instance": "2", "actions": ["y", "z"], "listeners": [reordered]},
        {"service": "b", "instance": "3", "actions": ["x"], "listeners": "junk"},
    ]
    a, b = _snapshot.group_services(entries)
    assert [len(a["instances"]), a["actions"], a["listeners"]] == [2, ["x", "y", "z"], [listener]]
    assert [b["service"], b["actions"], b["listeners"]] == ["b", ["x"], []]


async def test_the_page_is_served_with_a_strict_policy(client: TestClient[Any, Any]) -> None:
    page = await client.get("/")
    assert page.status == 200
    assert "daebus" in await page.text()
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    script = await client.get("/dashboard.js")
    assert script.status == 200
    assert "textContent" in await script.text()
    assert "innerHTML" not in await script.text()
    assert (await client.get("/dashboard.css")).status == 200
    assert (await client.get("/static/../../etc/passwd")).status == 404


async def test_the_snapshot_lists_the_services_and_what_they_run(
    client: TestClient[Any, Any], service: str
) -> None:
    async def listed() -> dict[str, Any] | None:
        snapshot = await (await client.get("/api/snapshot")).json()
        return next((s for s in snapshot["services"] if s["service"] == service), None)

    deadline = asyncio.get_running_loop().time() + 10
    while (found := await listed()) is None:
        assert asyncio.get_running_loop().time() < deadline, "the service never appeared"
        await asyncio.sleep(0.1)
    assert sorted(found["actions"]) == ["count", "echo", "fail"]
    assert len(found["instances"]) == 1
    assert found["instances"][0]["state"] == "running"


async def test_the_snapshot_shows_durable_backlogs_and_dead_letters(
    client: TestClient[Any, Any], apps: Apps, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = Daebus("dash-durable")
    channel = unique_name("dash-orders")

    @app.listen(channel, durable=True, retries=1, backoff=0.01)
    def always_fails(data: Any) -> None:
        raise RuntimeError("no stock")

    service = apps.start(app)
    monkeypatch.setenv("DAEBUS_REDIS_URL", redis_url)
    for n in range(2):
        broadcast.send(channel, {"order": n}, durable=True)

    async def durable() -> dict[str, Any] | None:
        snapshot = await (await client.get("/api/snapshot")).json()
        found = [d for d in snapshot["server"]["durable"] if d["channel"] == channel]
        return found[0] if found and found[0]["groups"][0]["dead_letters"] == 2 else None

    deadline = asyncio.get_running_loop().time() + 20
    while (found := await durable()) is None:
        assert asyncio.get_running_loop().time() < deadline, "no dead letters shown"
        await asyncio.sleep(0.1)
    assert found["length"] == 2
    [group] = found["groups"]
    assert group["group"] == service
    assert group["pending"] == 0
    snapshot = await (await client.get("/api/snapshot")).json()
    assert snapshot["server"]["dead_letters"] >= 2
    [entry] = [s for s in snapshot["services"] if s["service"] == service]
    [listener] = entry["listeners"]
    assert listener["channel"] == channel
    assert listener["durable"] is True


async def test_a_call_returns_its_parts_and_its_reply(
    client: TestClient[Any, Any], service: str
) -> None:
    answer = await client.post("/api/call", json={"service": service, "action": "count"})
    body = await answer.json()
    assert answer.status == 200, body
    assert body["ok"]
    assert body["reply"] == {"parts": 3}
    assert body["part_payloads"] == [{"part": 0}, {"part": 1}, {"part": 2}]
    echo = await client.post(
        "/api/call", json={"service": service, "action": "echo", "payload": {"<b>": "</script>"}}
    )
    assert (await echo.json())["reply"] == {"<b>": "</script>"}
    failed = await (
        await client.post("/api/call", json={"service": service, "action": "fail"})
    ).json()
    assert not failed["ok"]
    assert failed["kind"] == "RemoteError"
    assert "on fire" in failed["error"]
    nobody = await client.post(
        "/api/call", json={"service": unique_name("nobody"), "action": "x", "timeout": 0.5}
    )
    assert (await nobody.json())["kind"] == "ServiceUnavailableError"


async def test_bad_input_is_refused_with_the_reason(client: TestClient[Any, Any]) -> None:
    headers = {"Content-Type": "application/json"}
    bad = await client.post("/api/call", data=b"{not json", headers=headers)
    assert bad.status == 400
    assert "not valid JSON" in (await bad.json())["error"]
    for body, reason in (
        ({"action": "x"}, "service"),
        ({"service": "s", "action": ""}, "action"),
        ({"service": "s\n", "action": "x"}, "control characters"),
        ({"service": "s", "action": "x", "timeout": 0}, "timeout"),
        ({"service": "s", "action": "x", "timeout": "soon"}, "timeout"),
        ([1, 2], "JSON object"),
    ):
        answer = await client.post("/api/call", json=body)
        assert answer.status == 400, body
        assert reason in (await answer.json())["error"], body
    huge = await client.post(
        "/api/call", data=b'{"payload": "' + b"x" * 300_000 + b'"}', headers=headers
    )
    assert huge.status == 413
    form = await client.post("/api/publish", data="channel=x&message=1")
    assert form.status == 415  # a form from another site cannot post JSON
    no_message = await client.post("/api/publish", json={"channel": "x"})
    assert no_message.status == 400


async def test_publish_says_how_many_received(client: TestClient[Any, Any], redis_url: str) -> None:
    channel = unique_name("dash-publish")
    plain = redis.Redis.from_url(redis_url)
    subscriber = plain.pubsub()
    subscriber.subscribe(channel)
    try:
        answer = await client.post("/api/publish", json={"channel": channel, "message": {"hi": 1}})
        assert await answer.json() == {"receivers": 1}
        got = wait_for(
            lambda: subscriber.get_message(timeout=0.1) and subscriber.get_message(timeout=0.5)
        )
        assert json.loads(got["data"]) == {"hi": 1}
    finally:
        subscriber.close()
        plain.close()


async def test_the_websocket_pushes_snapshots_and_streams_a_call(
    client: TestClient[Any, Any], service: str
) -> None:
    async with client.ws_connect("/ws") as socket:
        assert (await socket.receive_json(timeout=10))["type"] == "ready"
        assert (await socket.receive_json(timeout=10))["type"] == "snapshot"
        await socket.send_json({"type": "call", "id": 7, "service": service, "action": "count"})
        seen: list[dict[str, Any]] = []
        while not seen or seen[-1]["type"] != "reply":
            message = await socket.receive_json(timeout=10)
            if message["type"] != "snapshot":
                seen.append(message)
        assert [m["payload"] for m in seen[:-1]] == [{"part": 0}, {"part": 1}, {"part": 2}]
        assert seen[-1]["id"] == 7
        assert seen[-1]["reply"] == {"parts": 3}
        await socket.send_str("not json")
        while (message := await socket.receive_json(timeout=10))["type"] == "snapshot":
            pass
        assert message == {"type": "error", "id": None, "error": "not a JSON object"}


async def test_the_bus_is_watched_only_while_a_page_watches(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pattern subscriber receives every PUBLISH: while it is there, a request to a
    # service with no instance finds a receiver. So it is there only while needed.
    monkeypatch.setattr(_snapshot, "LINGER", 0.2)
    dashboard = Dashboard(redis_url)
    before = int(redis_client.execute_command("PUBSUB", "NUMPAT"))
    async with TestClient(TestServer(dashboard.make_app())) as client:
        assert not dashboard.observer.watching
        async with client.ws_connect("/ws") as socket:
            assert (await socket.receive_json(timeout=10))["type"] == "ready"
            assert dashboard.observer.watching
            assert int(redis_client.execute_command("PUBSUB", "NUMPAT")) == before + 1
        await wait_until(lambda: not dashboard.observer.watching, timeout=10)
        await wait_until(
            lambda: int(redis_client.execute_command("PUBSUB", "NUMPAT")) == before, timeout=10
        )


async def test_a_hostile_websocket_client_costs_a_bounded_effort(
    client: TestClient[Any, Any],
) -> None:
    async with client.ws_connect("/ws") as socket:
        assert (await socket.receive_json(timeout=10))["type"] == "ready"
        await socket.send_bytes(b"\x00\xff binary")  # ignored
        for i in range(500):  # faster than they are answered: read as they are answered
            await socket.send_json({"type": "publish", "id": i, "channel": "c", "message": i})
        await socket.send_json({"type": "nonsense", "id": "x"})
        published = []
        while (message := await socket.receive_json(timeout=10))["type"] != "error":
            if message["type"] == "published":
                published.append(message["id"])
        assert published == list(range(500))
        assert message == {"type": "error", "id": "x", "error": "unknown type 'nonsense'"}
        await socket.send_str("x" * 300_000)  # past the limit: the socket is closed
        while (closed := await socket.receive(timeout=10)).type == WSMsgType.TEXT:
            pass
        assert closed.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    # The dashboard goes on.
    assert (await client.get("/api/snapshot")).status == 200


# -- the guard ---------------------------------------------------------------------------


async def test_a_token_is_required_when_one_is_set(guarded: TestClient[Any, Any]) -> None:
    assert (await guarded.get("/api/snapshot")).status == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert (await guarded.get("/api/snapshot", headers=wrong)).status == 401
    right = {"Authorization": f"Bearer {TOKEN}"}
    assert (await guarded.get("/api/snapshot", headers=right)).status == 200
    assert (await guarded.get("/api/snapshot", headers={"X-Daebus-Token": TOKEN})).status == 200
    assert (await guarded.post("/api/publish", json={"channel": "c", "message": 1})).status == 401
    assert (await guarded.get("/")).status == 200  # the page holds no data


async def test_the_websocket_wants_the_token_first(guarded: TestClient[Any, Any]) -> None:
    async with guarded.ws_connect("/ws") as socket:
        assert (await socket.receive_json(timeout=10))["type"] == "auth_required"
        await socket.send_json({"type": "auth", "token": "wrong-token"})
        assert (await socket.receive_json(timeout=10))["error"] == "wrong token"
        closed = await socket.receive(timeout=10)
        assert closed.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
        assert socket.close_code == 4001
    async with guarded.ws_connect("/ws") as socket:
        await socket.send_json({"type": "call", "id": 1, "service": "s", "action": "a"})
        assert (await socket.receive_json(timeout=10))["type"] == "auth_required"
        assert (await socket.receive_json(timeout=10))["error"] == "wrong token"
        assert (await socket.receive(timeout=10)).type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    async with guarded.ws_connect("/ws") as socket:
        assert (await socket.receive_json(timeout=10))["type"] == "auth_required"
        await socket.send_json({"type": "auth", "token": TOKEN})
        assert (await socket.receive_json(timeout=10))["type"] == "ready"
        assert (await socket.receive_json(timeout=10))["type"] == "snapshot"


async def test_other_hosts_and_origins_are_refused(client: TestClient[Any, Any]) -> None:
    rebound = await client.get("/api/snapshot", headers={"Host": "evil.example:8765"})
    assert rebound.status == 421
    assert (await client.get("/", headers={"Host": "evil.example"})).status == 421
    assert (await client.get("/api/snapshot", headers={"Host": "localhost:1"})).status == 200
    other = {"Origin": "http://evil.example"}
    assert (
        await client.post("/api/publish", json={"channel": "c", "message": 1}, headers=other)
    ).status == 403
    with pytest.raises(Exception, match="403"):
        await client.ws_connect("/ws", headers=other)
    own = {"Origin": f"http://{client.host}:{client.port}"}
    assert (await client.get("/api/snapshot", headers=own)).status == 200


def test_the_guard_compares_tokens_and_names_loopback() -> None:
    guard = Guard(TOKEN)
    assert guard.token_matches(TOKEN)
    assert not guard.token_matches(TOKEN[:-1])
    assert not guard.token_matches(None)
    assert not guard.token_matches(12)
    assert Guard(None).token_matches(None)
    with pytest.raises(ValueError, match="8 characters"):
        Guard("short")
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.2", "example.com"):
        assert not is_loopback(host), host


async def test_serving_off_loopback_without_a_token_is_refused(redis_url: str) -> None:
    with pytest.raises(ValueError, match="token is required"):
        await serve(redis_url, "0.0.0.0", 0)


def test_the_command_off_loopback_makes_a_token_and_requires_it(redis_url: str) -> None:
    with ServiceProcess(
        module="daebus.cli",
        args=["dashboard", "--host", "0.0.0.0", "--port", "0", "--redis-url", redis_url],
        redis_url=redis_url,
        name="dashboard",
    ) as process:
        found = wait_for(
            lambda: re.search(r"open http://0\.0\.0\.0:(\d+)/#token=(\S+)", process.stdout()),
            timeout=20,
            message=lambda: process.output(),
        )
        port, token = found.group(1), found.group(2)
        api = f"http://127.0.0.1:{port}/api/snapshot"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(api, timeout=10)
        assert refused.value.code == 401
        refused.value.close()
        allowed = urllib.request.Request(api, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(allowed, timeout=10) as answer:
            assert "services" in json.loads(answer.read())
        assert process.terminate() == 0
        assert token not in process.stderr()


def test_importing_daebus_loads_neither_aiohttp_nor_the_dashboard() -> None:
    code = (
        "import sys, daebus, daebus.cli; print(sorted(m for m in sys.modules"
        " if m.startswith(('aiohttp', 'daebus.dashboard'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.strip() == "[]"
