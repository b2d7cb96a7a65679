"""The service registry: each instance's entry, ``daebus services``, ``inspect``, ``channels``."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result

from _apps import Apps
from _helpers import ServiceProcess, unique_name, wait_for
from daebus import Daebus, DaebusCaller, _admin, protocol, registry
from daebus.cli import cli
from daebus.cli._registry import describe_channels, duration
from daebus.runtime import instances, presence

pytestmark = pytest.mark.timeout(90)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def listed(url: str) -> dict[str, int]:
    """Service -> instances, as ``daebus services --json`` lists them."""
    result = invoke("services", "--json", "--redis-url", url)
    assert result.exit_code == 0, result.output
    return {summary["service"]: summary["instances"] for summary in json.loads(result.output)}


@pytest.fixture
def quick_heartbeat(monkeypatch: pytest.MonkeyPatch) -> float:
    """In-process instances write their entry every 0.2 s."""
    monkeypatch.setattr(instances, "RENEW_EVERY", 0.2)
    return 0.2


# A service of the test, run as a subprocess: argv is service, heartbeat.
SERVICE = textwrap.dedent(
    """
    import sys
    from daebus import Daebus
    from daebus.runtime import instances

    instances.RENEW_EVERY = float(sys.argv[2])
    app = Daebus("registered")

    @app.action("work")
    def work():
        return app.instance_id

    @app.listen("events:*")
    def on_event(data):
        pass

    app.run(sys.argv[1])
    """
)


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    try:
        yield started
    finally:
        for process in started:
            process.close()


def test_two_services_of_two_instances_then_a_kill_and_a_stop(
    private_redis: Any, processes: list[ServiceProcess]
) -> None:
    # The check: 2 services, 4 instances; a SIGKILL drops one within three
    # heartbeats; a stop drops one at once; daebus health follows.
    url, heartbeat = private_redis.url, 1.0
    for service in ("alpha", "alpha", "beta", "beta"):
        process = ServiceProcess(code=SERVICE, args=[service, str(heartbeat)], redis_url=url)
        processes.append(process.start())
    wait_for(
        lambda: listed(url) == {"alpha": 2, "beta": 2},
        timeout=30,
        message=lambda: f"listed {listed(url)}\n" + "\n".join(p.output() for p in processes),
    )
    table = invoke("services", "--redis-url", url).output.splitlines()
    assert table[0].split()[:2] == ["SERVICE", "INSTANCES"]
    assert [line.split()[:2] for line in table[1:]] == [["alpha", "2"], ["beta", "2"]]

    processes[0].kill()
    # Its entry lives three heartbeats after its last write, which came before the kill.
    wait_for(lambda: listed(url) == {"alpha": 1, "beta": 2}, timeout=3 * heartbeat + 2)

    assert invoke("health", "beta", "--redis-url", url).exit_code == 0
    processes[2].terminate(signal.SIGTERM)
    assert listed(url) == {"alpha": 1, "beta": 1}  # deleted before it exited
    result = invoke("health", "beta", "--redis-url", url)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("beta: ready (instance ")
    processes[3].terminate(signal.SIGTERM)
    assert listed(url) == {"alpha": 1}
    result = invoke("health", "beta", "--redis-url", url)
    assert result.exit_code == 1
    assert "beta is not ready: no instance of 'beta' is running" in result.output


def test_an_entry_says_what_the_instance_runs(apps: Apps, quick_heartbeat: float) -> None:
    app = Daebus("described")

    @app.action("stock")
    def stock() -> int:
        return 4

    @app.listen("orders:*", shared=True)
    def on_order(data: Any) -> None:
        pass

    @app.listen("audit", durable=True, group="auditors", ordered=True)
    def on_audit(data: Any) -> None:
        pass

    @app.background("tick", 3600)
    def tick() -> None:
        pass

    @app.health_check
    def disk() -> bool:
        return True

    service = apps.start(app)
    (entry,) = registry.service_info(service, apps.url)["instances"]
    assert entry["service"] == service
    assert entry["instance"] == app.instance_id
    assert (entry["host"], entry["pid"]) == (socket.gethostname(), os.getpid())
    assert entry["actions"] == ["stock"]
    assert {(item["channel"], item["durable"], item["shared"]) for item in entry["listeners"]} == {
        ("orders:*", False, True),
        ("audit", True, True),
    }
    durable = next(item for item in entry["listeners"] if item["durable"])
    assert durable["group"] == "auditors"
    assert durable["ordered"]
    assert entry["jobs"] == ["tick"]
    assert entry["health_checks"] == ["disk"]
    assert entry["state"] == "running"
    assert entry["ttl"] == 3 * quick_heartbeat
    assert "routes" not in entry
    assert "sockets" not in entry
    for key in ("daebus", "python", "started", "uptime", "last_seen"):
        assert key in entry

    result = invoke("inspect", service, "--redis-url", apps.url)
    assert result.exit_code == 0, result.output
    assert f"instance {app.instance_id}" in result.output
    assert "actions: stock" in result.output
    assert "orders:* (pattern, shared)" in result.output
    assert "audit (durable, shared, ordered, group auditors)" in result.output
    as_json = json.loads(invoke("inspect", service, "--json", "--redis-url", apps.url).output)
    assert as_json["instances"][0]["instance"] == app.instance_id

    app.stop()
    assert registry.service_info(service, apps.url)["instances"] == []
    result = invoke("inspect", service, "--redis-url", apps.url)
    assert result.exit_code == 5
    assert "no instance of" in result.output


def test_http_routes_and_socket_handlers_are_listed(apps: Apps) -> None:
    from daebus import DaebusHttp, DaebusWebSocket

    app = Daebus("web")
    app.attach(DaebusHttp(port=0, host="127.0.0.1"))
    app.attach(DaebusWebSocket(port=0, host="127.0.0.1"))

    @app.route("/users/<int:user_id>", methods=["GET", "DELETE"])
    def user(req: Any, user_id: int) -> dict[str, int]:
        return {"id": user_id}

    @app.socket("ping")
    def ping(data: Any, client_id: str) -> dict[str, bool]:
        return {"pong": True}

    service = apps.start(app)
    (entry,) = registry.service_info(service, apps.url)["instances"]
    assert entry["routes"] == [{"path": "/users/<int:user_id>", "methods": ["GET", "DELETE"]}]
    assert entry["sockets"] == ["ping"]
    assert entry["http"]["host"] == "127.0.0.1"


def test_counts_are_published_with_the_heartbeat(apps: Apps, quick_heartbeat: float) -> None:
    app = Daebus("counted")

    @app.action("sync_ok")
    def sync_ok() -> int:
        return 1

    @app.action("sync_fails")
    def sync_fails() -> None:
        raise ValueError("no")

    @app.action("async_fails")
    async def async_fails() -> None:
        raise ValueError("no")

    channel = unique_name("counted")

    @app.listen(channel)
    def on_message(data: Any) -> None:
        if data == "bad":
            raise ValueError("bad message")

    @app.listen(channel + ":durable", durable=True)
    def on_durable(data: Any) -> None:
        pass

    service = apps.start(app)
    caller = apps.caller(service)
    for _ in range(5):
        caller.send_request("sync_ok", {})
    for action in ("sync_fails", "async_fails"):
        with pytest.raises(Exception, match="no"):
            caller.send_request(action, {})
    app.broadcast.send(channel, "good")
    app.broadcast.send(channel, "bad")
    app.broadcast.send(channel + ":durable", "kept", durable=True)

    def counts() -> tuple[Any, Any] | None:
        (entry,) = registry.service_info(service, apps.url)["instances"]
        wanted = ({"requests": 7, "broadcasts": 2, "durable": 1}, {"requests": 2, "broadcasts": 1})
        got = (entry["handled"], {k: v for k, v in entry["errors"].items() if v})
        if got != wanted:
            return None
        # Read after the entry: read before, it could be a heartbeat older.
        (summary,) = [s for s in registry.services(apps.url) if s["service"] == service]
        return summary, entry

    summary, _ = wait_for(counts, timeout=10, message="the counts never came")
    assert (summary["handled"], summary["errors"], summary["instances"]) == (10, 3, 1)


def test_on_memory_the_registry_is_the_process(quick_heartbeat: float) -> None:
    url = f"memory://{unique_name('registry')}"
    with Apps(url) as apps:
        first, second = Daebus("mem"), Daebus("mem")
        apps.start(first, "mem")
        apps.start(second, "mem")
        assert listed(url) == {"mem": 2}
        second.stop()
        assert listed(url) == {"mem": 1}
    assert listed(url) == {}


def test_no_services(private_redis: Any) -> None:
    result = invoke("services", "--redis-url", private_redis.url)
    assert result.exit_code == 0
    assert result.output == "no services running\n"


def test_an_entry_that_is_not_json_is_skipped(apps: Apps, redis_client: Any) -> None:
    key = protocol.registry_key(unique_name("junk"), "x:1:abcdef")
    redis_client.set(key, b"\xff not json", px=60_000)
    redis_client.zadd(protocol.registry_index(), {key: 1 << 60})
    try:
        assert all(entry.get("instance") != "x:1:abcdef" for entry in registry.instances(apps.url))
    finally:
        redis_client.zrem(protocol.registry_index(), key)
        redis_client.delete(key)


# -- channels -----------------------------------------------------------------------------


def test_channels_count_subscribers_and_matching_pattern_listeners(
    private_redis: Any, quick_heartbeat: float
) -> None:
    url = private_redis.url
    with Apps(url) as apps:
        by_pattern, by_name = Daebus("by_pattern"), Daebus("by_name")
        by_pattern.listen("events:*")(lambda data: None)
        by_pattern.listen("events:*", ordered=True)(lambda data: None)  # one subscription
        by_name.listen("events:one")(lambda data: None)
        apps.start(by_pattern, "watcher")
        apps.start(by_name, "named")
        with DaebusCaller("named", redis_url=url) as caller:
            caller.send_request(protocol.HEALTH_ACTION, {})  # its reply channel is subscribed
            result = invoke("channels", "--json", "--redis-url", url)
            assert result.exit_code == 0, result.output
            found = {c["channel"]: c for c in json.loads(result.output)["channels"]}
            replies = [name for name in found if name.startswith("caller:")]
            assert replies
            assert all(found[name]["kind"] == "reply" for name in replies)
        assert found["events:one"] == {
            "channel": "events:one",
            "kind": "plain",
            "subscribers": 1,
            "patterns": 1,
        }
        assert found["named"]["kind"] == "service"
        assert found["named"]["subscribers"] == 1
        assert found["watcher"]["service"] == "watcher"
        assert found[protocol.instances_channel("named")]["kind"] == "daebus"

        result = invoke("channels", "events:*", "--redis-url", url)
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert lines[0].split() == ["CHANNEL", "KIND", "SUBSCRIBERS", "PATTERNS"]
        assert lines[1].split() == ["events:one", "plain", "1", "1"]
        assert (
            lines[-1]
            == "1 pattern subscription on the server, 1 of them by running daebus services"
        )


def test_channel_kinds() -> None:
    services = {"inventory"}
    assert protocol.channel_kind("inventory", services) == "service"
    assert protocol.channel_kind("inventory.workflows", services) == "service"
    assert protocol.channel_kind("inventory.responses", services) == "reply"
    assert protocol.channel_kind("caller:1234", services) == "reply"
    assert protocol.channel_kind("caller_1234", services) == "reply"
    assert protocol.channel_kind("daebus:instances:inventory", services) == "daebus"
    assert protocol.channel_kind("inventory", ()) == "plain"
    assert protocol.channel_kind("user:1", services) == "plain"


def test_patterns_count_once_per_instance() -> None:
    entries = [
        {"service": "a", "listeners": [{"channel": "x:*", "pattern": True}] * 2},
        {"service": "b", "listeners": [{"channel": "x:?", "pattern": True, "durable": False}]},
        {"service": "c", "listeners": [{"channel": "x:1", "pattern": False}]},
    ]
    (item,) = describe_channels(["x:1"], {"x:1": 1}, entries)
    assert item == {"channel": "x:1", "kind": "plain", "subscribers": 1, "patterns": 2}


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.25, "0.2s"), (12, "12s"), (75, "1m15s"), (3 * 3600 + 300, "3h05m"), (90000, "1d1h")],
)
def test_durations(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown


def test_what_an_entry_holds_reaches_the_terminal_escaped(private_redis: Any) -> None:
    # Anyone who can write to the server can write an entry.
    client = redis.Redis.from_url(private_redis.url)
    evil = "evil\x1b[2J\nFORGED"
    key = protocol.registry_key(evil, "x:1:abcdef")
    entry = {"service": evil, "instance": "x:1:abcdef", "ttl": 60, "actions": ["a\x1b[31m"]}
    client.set(key, json.dumps(entry), px=60_000)
    client.zadd(protocol.registry_index(), {key: 1 << 60})
    try:
        for args in (["services"], ["inspect", evil]):
            output = invoke(*args, "--redis-url", private_redis.url).output
            assert "\x1b" not in output
            assert "\\x1b[2J\\nFORGED" in output
    finally:
        client.close()


def test_a_stopping_instance_leaves_the_registry_before_it_drains(apps: Apps) -> None:
    app = Daebus("draining")
    entered, release = threading.Event(), threading.Event()

    @app.action("slow")
    def slow() -> None:
        entered.set()
        release.wait(10)

    service = apps.start(app)
    caller = apps.caller(service)
    calling = threading.Thread(target=lambda: caller.send_request("slow", {}, timeout=10))
    calling.start()
    assert entered.wait(5)
    stopper = threading.Thread(target=app.stop)
    stopper.start()
    try:
        # Gone while the action still runs: the stop has begun, the drain has not ended.
        wait_for(lambda: registry.service_info(service, apps.url)["instances"] == [])
        assert calling.is_alive()
    finally:
        release.set()
        calling.join(10)
        stopper.join(15)


# What anyone who can write to the server may leave under the registry's keys.
FORGED = [
    {"instance": "x:1:no-service"},
    {"service": 7, "instance": "x:1:not-a-name"},
    {
        "service": "forged",
        "instance": "x:1:wrong-types",
        "uptime": 1.7e308,
        "started": "yesterday",
        "in_flight": -3,
        "ttl": "long",
        "handled": [1, 2],
        "errors": {"requests": "many", "http": 2},
        "actions": "abc",
        "listeners": ["events:*", {"channel": 5, "pattern": True}, {"pattern": True}],
        "routes": [1, {"path": "/x"}],
        "http": [],
        "sockets": 3,
    },
    {"service": "forged", "instance": "x:1:huge", "started": 2**53, "actions": ["a"] * 10},
]


def test_forged_entries_of_any_shape_are_read_without_failing(private_redis: Any) -> None:
    client = redis.Redis.from_url(private_redis.url)
    for entry in FORGED:
        key = protocol.registry_key(str(entry.get("service")), str(entry["instance"]))
        client.set(key, json.dumps(entry), px=60_000)
        client.zadd(protocol.registry_index(), {key: 1 << 60})
    client.close()
    url = private_redis.url

    found = registry.instances(url)
    assert sorted(entry["instance"] for entry in found) == ["x:1:huge", "x:1:wrong-types"]
    wrong = next(entry for entry in found if entry["instance"] == "x:1:wrong-types")
    assert wrong["service"] == "forged"
    for field in ("uptime", "started", "in_flight", "handled", "actions", "http", "sockets"):
        assert field not in wrong, field
    assert wrong["errors"] == {"http": 2}  # kinds to come are kept
    assert wrong["listeners"] == []
    assert wrong["routes"] == []
    (summary,) = registry.services(url)
    assert summary["instances"] == 2
    assert summary["in_flight"] == 0

    for args in (
        ["services"],
        ["inspect", "forged"],
        ["channels"],
        ["inspect", "forged", "--json"],
    ):
        result = invoke(*args, "--redis-url", url)
        assert result.exit_code == 0, result.output
        assert len(result.output) < 5000


def test_an_entry_too_large_or_not_a_string_is_not_read(private_redis: Any) -> None:
    client = redis.Redis.from_url(private_redis.url)
    key = protocol.registry_key("bloated", "x:1:big")
    entry = {"service": "bloated", "instance": "x:1:big", "actions": ["a" * 1000] * 3000}
    client.set(key, json.dumps(entry), px=60_000)
    client.zadd(protocol.registry_index(), {key: 1 << 60})
    other = protocol.registry_key("hashed", "x:1:hash")  # not a string at all
    client.hset(other, "service", "hashed")
    client.zadd(protocol.registry_index(), {other: 1 << 60})
    client.close()
    with Apps(private_redis.url) as own:
        own.start(Daebus("small"), "small")
        assert listed(private_redis.url) == {"small": 1}


def test_a_heartbeat_whose_entry_fails_does_not_end_the_heartbeats(
    apps: Apps, quick_heartbeat: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The entry is written with the instance's renewal: a write that raised ended both.
    described = presence.Presence.describe
    calls = []

    def describe_once_wrong(self: presence.Presence) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("dictionary changed size during iteration")
        return described(self)

    monkeypatch.setattr(presence.Presence, "describe", describe_once_wrong)
    app = Daebus("beating")
    app.add_action("ping", lambda: "pong")
    service = apps.start(app)
    apps.caller(service).send_request("ping", {})

    def handled() -> bool:
        found = registry.service_info(service, apps.url)["instances"]
        return bool(found) and found[0]["handled"]["requests"] == 1

    wait_for(handled, timeout=10, message="the heartbeats stopped")


def test_forged_entries_cannot_crowd_out_the_running_instances(
    private_redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What registry readers read in all is bounded: the instances that run (their
    # entries expire soonest) are read first, forged entries that never expire last.
    monkeypatch.setattr(_admin, "ENTRIES_BYTES", 20_000)
    client = redis.Redis.from_url(private_redis.url)
    for n in range(10):
        key = protocol.registry_key("forged", f"x:{n}:padded")
        entry = {"service": "forged", "instance": f"x:{n}:padded", "padding": "p" * 5000}
        client.set(key, json.dumps(entry), px=60_000)
        client.zadd(protocol.registry_index(), {key: 1 << 60})
    client.close()
    with Apps(private_redis.url) as own:
        own.start(Daebus("real"), "real")
        found = listed(private_redis.url)
    assert found["real"] == 1
    assert found["forged"] < 10


def test_a_registry_write_that_keeps_failing_is_said_once(
    private_redis: Any, private_apps: Apps, quick_heartbeat: float, caplog: Any
) -> None:
    # Someone made the registry's index a plain string: every ZADD of it fails.
    server = redis.Redis.from_url(private_redis.url)
    server.set(protocol.registry_index(), "not a sorted set")
    caplog.set_level("DEBUG", logger="daebus")
    service = private_apps.start(Daebus("forged-index"))

    def failures() -> list[str]:
        return [r.getMessage() for r in caplog.records if "registry entry" in r.getMessage()]

    wait_for(lambda: len(failures()) >= 5, timeout=10, message="the writes do not fail")
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1, warned
    assert "could not refresh its registry entry: WRONGTYPE" in warned[0]
    server.delete(protocol.registry_index())
    wait_for(lambda: service in listed(private_redis.url), timeout=10)
    assert "refreshes its registry entry again" in caplog.text
    server.close()


def test_an_entry_too_long_for_readers_is_shortened_to_fit(apps: Apps) -> None:
    app = Daebus("sprawling")
    for number in range(20_000):  # about 700 KiB of action names
        app.add_action(f"an_action_with_a_long_name_{number:05}", lambda: None)
    service = apps.start(app)
    (entry,) = registry.service_info(service, apps.url)["instances"]
    assert entry["truncated"] == {"actions": 20_000}
    assert 0 < len(entry["actions"]) < 20_000
    assert entry["actions"][0] == "an_action_with_a_long_name_00000"
