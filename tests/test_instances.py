"""Instances of one service share its requests: each runs once, the load spreads."""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import signal
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from _apps import Apps
from _helpers import QUIET, ServiceProcess, unique_name, wait_for
from daebus import Daebus, DaebusCaller, protocol, request
from daebus.runtime import instances as instances_module
from daebus.transport import transport_from_url

pytestmark = pytest.mark.timeout(90)


class Counted:
    """Apps of one service whose ``work`` action records which instance ran what."""

    def __init__(self, delay: float = 0.0) -> None:
        self.runs: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self.delay = delay

    def app(self) -> Daebus:
        app = Daebus("shared")

        @app.action("work")
        def work() -> str:
            if self.delay:
                time.sleep(self.delay)
            assert app.instance_id is not None
            with self._lock:
                self.runs.append((app.instance_id, request.payload.get("n")))
            return app.instance_id

        return app

    def per_instance(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(instance for instance, _ in self.runs)

    def numbers(self) -> list[Any]:
        with self._lock:
            return [n for _, n in self.runs]


def call_many(caller: DaebusCaller, numbers: range, threads: int = 8) -> list[Any]:
    def one(n: int) -> Any:
        return caller.send_request("work", {"n": n}, timeout=10)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, numbers))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def runtime_of(app: Daebus) -> Any:
    runtime = app._runtime
    assert runtime is not None
    return runtime


def knows_others(app: Daebus, count: int) -> Callable[[], bool]:
    return lambda: app._runtime is not None and len(app._runtime.instances.others) == count


def started_together(apps: Apps, count: int) -> tuple[Counted, str, list[Daebus]]:
    """``count`` instances of a new service, started, each knowing of the others."""
    counted = Counted()
    service = unique_name("shared")
    started = [counted.app() for _ in range(count)]
    for app in started:
        apps.start(app, service)
    for app in started:
        wait_for(knows_others(app, count - 1), message="the instances do not know each other")
    return counted, service, started


@pytest.fixture
def quick_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process instances renew every 0.2 s, and are forgotten 1 s after their last."""
    monkeypatch.setattr(instances_module, "RENEW_EVERY", 0.2)
    monkeypatch.setattr(instances_module, "EXPIRY_MS", 1000)


# -- the transports' claims and records ---------------------------------------------------


@pytest.fixture(params=["redis", "memory", "cluster", "sentinel"])
def any_url(request: pytest.FixtureRequest) -> str:
    if request.param in ("cluster", "sentinel"):
        return str(request.getfixturevalue(f"{request.param}_url"))
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return f"memory://{unique_name('claims')}"


async def test_claim_is_taken_once_and_expires(any_url: str) -> None:
    first, second = transport_from_url(any_url), transport_from_url(any_url)
    await first.connect()
    await second.connect()
    try:
        key = protocol.claim_key(unique_name("svc"), uuid.uuid4().hex)
        assert await first.claim(key, "a", 200)
        assert not await second.claim(key, "b", 200)
        assert not await first.claim(key, "a", 200)
        await asyncio.sleep(0.3)  # the claim's own expiry: nothing to poll
        assert await second.claim(key, "b", 200)
    finally:
        await first.close()
        await second.close()


async def test_membership_record(any_url: str) -> None:
    transport = transport_from_url(any_url)
    await transport.connect()
    try:
        key = protocol.instances_key(unique_name("svc"))
        assert await transport.renew_member(key, "a", 5000) == ["a"]
        assert sorted(await transport.renew_member(key, "b", 150)) == ["a", "b"]
        await asyncio.sleep(0.25)  # b's entry runs out
        assert await transport.renew_member(key, "a", 5000) == ["a"]
        await transport.remove_member(key, "a")
        assert await transport.renew_member(key, "c", 5000) == ["c"]
        await transport.remove_member(key, "c")
    finally:
        await transport.close()


# -- sharing ------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 3])
def test_instances_share_requests(apps: Apps, count: int) -> None:
    counted, service, started = started_together(apps, count)
    replies = call_many(apps.caller(service), range(1000))

    assert sorted(counted.numbers()) == list(range(1000))  # each ran exactly once
    shares = counted.per_instance()
    assert set(shares) == {app.instance_id for app in started}
    assert min(shares.values()) >= 200, shares
    assert collections.Counter(replies) == shares


def test_a_forged_departure_does_not_make_an_instance_run_alone(
    apps: Apps, redis_client: redis.Redis
) -> None:
    # Anyone can publish on the announcements channel: the record, not the message,
    # decides whether an instance is alone.
    counted, service, (first, second) = started_together(apps, 2)
    for other in (first, second):
        forged = {"event": "leave", "instance": other.instance_id}
        redis_client.publish(protocol.instances_channel(service), json.dumps(forged))
    replies = call_many(apps.caller(service), range(300))

    assert sorted(counted.numbers()) == list(range(300))  # each ran exactly once
    assert collections.Counter(replies) == counted.per_instance()
    for app in (first, second):
        assert knows_others(app, 1)()


def test_forged_joins_cost_little_and_write_nothing_of_theirs_to_the_log(
    apps: Apps, redis_client: redis.Redis, logs: pytest.LogCaptureFixture
) -> None:
    counted, service, (first, second) = started_together(apps, 2)
    channel = protocol.instances_channel(service)
    with redis_client.pipeline(transaction=False) as pipe:
        for n in range(5000):  # ids shaped like real ones, beyond what is believed
            pipe.publish(channel, json.dumps({"event": "join", "instance": f"x:{n}:abcdef"}))
        forged_line = "evil\n2026-01-01 ERROR daebus FORGED LINE \x1b[2J"
        pipe.publish(channel, json.dumps({"event": "join", "instance": forged_line}))
        pipe.execute()
    replies = call_many(apps.caller(service), range(300))

    assert sorted(counted.numbers()) == list(range(300))  # each ran exactly once
    assert collections.Counter(replies) == counted.per_instance()
    text = "\n".join(record.getMessage() for record in logs.records)
    assert "FORGED" not in text
    assert text.count("joined: this instance") <= 4  # a line, then a count, per instance
    for app in (first, second):  # the record decides: the forged ones are forgotten
        wait_for(knows_others(app, 1), message="the forged instances were never forgotten")


def test_after_a_restart_no_instance_runs_alone_too_soon(
    monkeypatch: pytest.MonkeyPatch, private_apps: Apps, private_redis: Any
) -> None:
    # A restarted server has forgotten the record: the instance that writes itself back
    # first must not take the record's word that it is alone.
    monkeypatch.setattr(instances_module, "RENEW_EVERY", 1.0)
    monkeypatch.setattr(instances_module, "EXPIRY_MS", 3000)
    counted, service, _ = started_together(private_apps, 2)
    caller = private_apps.caller(service, timeout=2)
    private_redis.kill()
    private_redis.start()

    def answered() -> bool:
        try:
            caller.send_request("work", {"n": -1})
        except Exception:
            return False
        return True

    wait_for(answered, timeout=15, message="the service did not come back")
    done = 0
    stop = time.monotonic() + 3.0  # three renewals' time after the restart
    while time.monotonic() < stop:
        caller.send_request("work", {"n": done})
        done += 1
    numbers = [n for n in counted.numbers() if isinstance(n, int) and n >= 0]
    assert sorted(numbers) == list(range(done)), "some requests ran twice"


def test_lone_instance_makes_no_claim(private_apps: Apps, private_redis: Any) -> None:
    counted = Counted()
    service = private_apps.start(counted.app())
    client = redis.Redis.from_url(private_redis.url)
    try:

        def sets() -> int:
            return int(client.info("commandstats").get("cmdstat_set", {}).get("calls", 0))

        before = sets()
        call_many(private_apps.caller(service), range(200))
        assert len(counted.runs) == 200
        assert sets() == before
        assert not client.keys(protocol.claim_key(service, "*"))
        assert client.zrange(protocol.instances_key(service), 0, -1) == [
            str(counted.runs[0][0]).encode()
        ]
    finally:
        client.close()


def test_the_id_is_in_the_start_line(apps: Apps, logs: pytest.LogCaptureFixture) -> None:
    app = Counted().app()
    service = apps.start(app)
    instance = app.instance_id
    assert instance is not None
    host, pid, random_part = instance.split(":")
    assert host
    assert int(pid) > 0
    assert len(random_part) == 6
    assert any(f"listening on {service!r}" in m and instance in m for m in logs.messages), (
        logs.messages
    )


def test_an_instance_joining_while_calls_flow_duplicates_nothing(apps: Apps) -> None:
    counted = Counted()
    service = unique_name("shared")
    first = counted.app()
    apps.start(first, service)
    caller = apps.caller(service)
    stop = threading.Event()
    sent: list[int] = []
    numbering = itertools.count()

    def flow() -> None:
        while not stop.is_set():
            n = next(numbering)
            caller.send_request("work", {"n": n}, timeout=10)
            sent.append(n)

    threads = [threading.Thread(target=flow) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(counted.runs) >= 100)
        second, third = counted.app(), counted.app()
        apps.start(second, service)
        wait_for(lambda: len(counted.per_instance()) == 2, message="the second took nothing")
        apps.start(third, service)
        wait_for(lambda: len(counted.per_instance()) == 3, message="the third took nothing")
    finally:
        stop.set()
        for thread in threads:
            thread.join(20)
    assert sorted(counted.numbers()) == sorted(sent)  # each ran once, none twice


def test_a_stopped_instance_finishes_what_it_took(apps: Apps) -> None:
    counted = Counted(delay=0.3)
    service = unique_name("shared")
    first, second = counted.app(), counted.app()
    apps.start(first, service)
    apps.start(second, service)
    wait_for(knows_others(first, 1))
    caller = apps.caller(service)
    with ThreadPoolExecutor(40) as pool:
        futures = [
            pool.submit(caller.send_request, "work", {"n": n}, timeout=10) for n in range(40)
        ]
        wait_for(lambda: runtime_of(second).instances.taken >= 10)
        second.stop()
        replies = [future.result() for future in futures]
    assert sorted(counted.numbers()) == list(range(40))
    assert collections.Counter(replies)[second.instance_id] >= 10
    # The one left runs alone again, claiming nothing.
    wait_for(lambda: not runtime_of(first).instances.shared)
    taken = runtime_of(first).instances.taken
    assert caller.send_request("work", {"n": 40}) == first.instance_id
    assert runtime_of(first).instances.taken == taken


SERVICE = textwrap.dedent(
    """
    import sys
    from daebus import Daebus
    from daebus.runtime import instances

    # Forgotten soon after a kill, so that the test need not wait the default expiry.
    instances.RENEW_EVERY, instances.EXPIRY_MS = 0.5, 2_000

    app = Daebus("shared")

    @app.action("work")
    def work():
        app.cache.hincrby(sys.argv[2], app.instance_id, 1)
        return app.instance_id

    app.run(sys.argv[1])
    """
)


def test_subprocess_instances_share_and_a_killed_one_expires(
    quick_expiry: None,
    apps: Apps,
    redis_url: str,
    redis_client: redis.Redis,
    service_processes: Callable[..., ServiceProcess],
) -> None:
    service, runs_key = unique_name("shared"), unique_name("runs")
    one = service_processes(SERVICE, service, runs_key)
    two = service_processes(SERVICE, service, runs_key)
    one.wait_ready(service)
    two.wait_ready(service, count=2)
    key = protocol.instances_key(service)
    wait_for(lambda: redis_client.zcard(key) == 2)
    replies = call_many(apps.caller(service), range(1000))

    runs = {_text(k): int(v) for k, v in redis_client.hgetall(runs_key).items()}
    assert sum(runs.values()) == 1000, runs
    assert collections.Counter(replies) == runs
    assert len(runs) == 2, runs
    assert min(runs.values()) >= 200, runs
    for process in (one, two):
        assert any(instance in process.stderr() for instance in runs), process.output()

    # One in-process instance joins; one subprocess is killed: the other two go on.
    counted = Counted()
    local = counted.app()
    apps.start(local, service)
    wait_for(knows_others(local, 2))
    one.kill()
    # Forgotten once its entry runs out (the subprocess's 2 s expiry, the local one's 1 s).
    wait_for(knows_others(local, 1), timeout=30, message="the killed instance never expired")
    two.terminate(signal.SIGTERM)
    wait_for(lambda: not runtime_of(local).instances.others, timeout=15)
    # The killed one left no word: it may be frozen, not dead, so claims go on a while.
    assert runtime_of(local).instances.shared
    assert redis_client.zrange(key, 0, -1) == [str(local.instance_id).encode()]
    caller = apps.caller(service)
    assert caller.send_request("work", {"n": 1}) == local.instance_id


def test_instances_share_on_memory(quick_expiry: None) -> None:
    url = f"memory://{unique_name('shared')}"
    counted = Counted()
    with Apps(url) as apps:
        first, second = counted.app(), counted.app()
        apps.start(first, "shared")
        apps.start(second, "shared")
        wait_for(knows_others(first, 1))
        replies = call_many(apps.caller("shared"), range(300))
        assert sorted(counted.numbers()) == list(range(300))
        shares = counted.per_instance()
        assert min(shares.values()) >= 60, shares
        assert collections.Counter(replies) == shares
        second.stop()
        wait_for(lambda: not runtime_of(first).instances.shared)
        time.sleep(QUIET)
        assert not runtime_of(first).instances.shared
