"""Shared background jobs run on one instance at a time; the lease moves when it goes."""

from __future__ import annotations

import asyncio
import itertools
import json
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from _apps import Apps
from _helpers import ServiceProcess, unique_name, wait_for
from daebus import Blueprint, Daebus, SetupError, protocol
from daebus.runtime.jobs import LEASE_FLOOR, BackgroundTask
from daebus.testing import memory_url
from daebus.transport import transport_from_url

pytestmark = pytest.mark.timeout(60)

INTERVAL = 0.1
LEASE = 1.0


class Runs:
    """Where the instances of a service record each run of their job: who, from, to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.runs: list[tuple[str, float, float]] = []

    def app(self, *, shared: bool = True, lease: float | None = LEASE, took: float = 0.0) -> Daebus:
        app = Daebus("jobs")

        @app.background("tick", INTERVAL, shared=shared, lease=lease if shared else None)
        def tick() -> None:
            started = time.monotonic()
            if took:
                time.sleep(took)
            assert app.instance_id is not None
            with self._lock:
                self.runs.append((app.instance_id, started, time.monotonic()))

        return app

    def snapshot(self) -> list[tuple[str, float, float]]:
        with self._lock:
            return sorted(self.runs, key=lambda run: run[1])

    def since(self, moment: float) -> list[tuple[str, float, float]]:
        return [run for run in self.snapshot() if run[1] >= moment]


def assert_one_at_a_time(runs: list[tuple[str, float, float]]) -> None:
    for before, after in itertools.pairwise(runs):
        assert after[1] >= before[2], f"two runs overlap: {before} and {after}"


@pytest.fixture
def memory_apps() -> Iterator[Apps]:
    with Apps(memory_url()) as manager:
        yield manager


@pytest.mark.parametrize("where", ["redis", "memory"])
async def test_a_claim_is_renewed_and_released_only_by_its_owner(
    where: str, redis_url: str
) -> None:
    transport = transport_from_url(redis_url if where == "redis" else memory_url())
    await transport.connect()
    try:
        key = protocol.lease_key(unique_name("svc"), "job")
        assert await transport.claim(key, "a", 300)
        assert not await transport.claim(key, "b", 300)
        assert not await transport.renew_claim(key, "b", 300)
        assert not await transport.release_claim(key, "b")
        assert await transport.renew_claim(key, "a", 600)
        await asyncio.sleep(0.4)  # past the first time, within the renewed one
        assert not await transport.claim(key, "b", 300)
        assert await transport.release_claim(key, "a")
        assert not await transport.release_claim(key, "a")
        assert await transport.claim(key, "b", 100)
        await asyncio.sleep(0.2)
        # Expired: the old owner can neither renew nor release another's lease.
        assert not await transport.renew_claim(key, "b", 100)
        assert await transport.claim(key, "c", 1000)
        assert not await transport.release_claim(key, "b")
        assert await transport.release_claim(key, "c")
    finally:
        await transport.close()


def test_three_instances_run_a_shared_job_one_at_a_time(
    apps: Apps, redis_client: redis.Redis
) -> None:
    runs_key = unique_name("runs")
    instances = []
    for _ in range(3):
        app = Daebus("jobs")

        @app.background("tick", INTERVAL, shared=True, lease=LEASE)
        def tick(app: Daebus = app) -> None:
            started = time.time()
            time.sleep(0.01)
            record = [app.instance_id, started, time.time()]
            app.cache.rpush(runs_key, json.dumps(record))

        instances.append(app)
    service = unique_name("jobs")
    for app in instances:
        apps.start(app, service)
    began = time.time()
    wait_for(lambda: redis_client.llen(runs_key) >= 20, timeout=10)
    time.sleep(0.5)
    elapsed = time.time() - began
    runs = sorted(
        (json.loads(raw) for raw in redis_client.lrange(runs_key, 0, -1)), key=lambda r: r[1]
    )

    assert {run[0] for run in runs} == {runs[0][0]}, "runs came from more than one instance"
    assert_one_at_a_time(runs)
    # First run one interval after start; no run lost, none doubled.
    expected = elapsed / INTERVAL
    assert 0.7 * expected <= len(runs) <= expected + 1, (len(runs), expected)
    holder = redis_client.get(protocol.lease_key(service, "tick"))
    assert holder is not None
    assert holder.decode() == runs[0][0]


def test_a_holder_that_stops_hands_the_job_over_at_once(memory_apps: Apps) -> None:
    runs = Runs()
    instances = {}
    service = unique_name("jobs")
    for _ in range(3):
        app = runs.app()
        memory_apps.start(app, service)
        instances[app.instance_id] = app
    wait_for(lambda: len(runs.snapshot()) >= 3)
    holder = runs.snapshot()[0][0]

    instances.pop(holder).stop()
    stopped = time.monotonic()
    took_over = wait_for(lambda: runs.since(stopped), timeout=5)[0]
    assert took_over[0] in instances
    # At the next run of another instance: within one interval (and some scheduling).
    assert took_over[1] - stopped <= INTERVAL + 0.1, took_over[1] - stopped
    time.sleep(5 * INTERVAL)
    after = runs.since(stopped)
    assert {run[0] for run in after} == {took_over[0]}, after
    assert_one_at_a_time(runs.snapshot())


def test_a_holder_stopped_on_a_real_server_hands_over_and_releases(
    apps: Apps, redis_client: redis.Redis
) -> None:
    runs = Runs()
    service = unique_name("jobs")
    first, second = runs.app(), runs.app()
    apps.start(first, service)
    wait_for(lambda: runs.snapshot())
    apps.start(second, service)
    time.sleep(3 * INTERVAL)
    assert {run[0] for run in runs.snapshot()} == {first.instance_id}

    first.stop()
    stopped = time.monotonic()
    took_over = wait_for(lambda: runs.since(stopped), timeout=5)[0]
    assert took_over[0] == second.instance_id
    assert took_over[1] - stopped <= INTERVAL + 0.1, took_over[1] - stopped
    key = protocol.lease_key(service, "tick")
    assert redis_client.get(key) == second.instance_id.encode()
    second.stop()
    assert redis_client.get(key) is None  # released, not left to expire


def test_a_run_never_overlaps_a_run_on_another_instance(memory_apps: Apps) -> None:
    # Each run takes longer than the lease: the holder renews it while it runs.
    runs = Runs()
    service = unique_name("jobs")
    for _ in range(2):
        memory_apps.start(runs.app(lease=0.3, took=0.5), service)
    wait_for(lambda: len(runs.snapshot()) >= 4, timeout=10)
    assert_one_at_a_time(runs.snapshot())
    assert len({run[0] for run in runs.snapshot()}) == 1


SERVICE = textwrap.dedent(
    """
    import json
    import sys
    import time
    from daebus import Daebus

    app = Daebus("jobs")

    @app.background("tick", float(sys.argv[3]), shared=True, lease=float(sys.argv[4]))
    def tick():
        started = time.time()
        app.cache.rpush(sys.argv[2], json.dumps([app.instance_id, started, time.time()]))

    app.run(sys.argv[1])
    """
)


def test_a_killed_holder_loses_the_job_within_a_lease_time(
    apps: Apps,
    redis_client: redis.Redis,
    service_processes: Callable[..., ServiceProcess],
) -> None:
    service, runs_key = unique_name("jobs"), unique_name("runs")
    interval, lease = 0.1, 1.5
    child = service_processes(SERVICE, service, runs_key, str(interval), str(lease))
    child.wait_ready(service)

    def recorded() -> list[Any]:
        return [json.loads(raw) for raw in redis_client.lrange(runs_key, 0, -1)]

    wait_for(lambda: recorded(), timeout=10, message=child.output)
    local = Daebus("jobs")

    @local.background("tick", interval, shared=True, lease=lease)
    def tick() -> None:
        started = time.time()
        local.cache.rpush(runs_key, json.dumps([local.instance_id, started, time.time()]))

    apps.start(local, service)
    time.sleep(5 * interval)
    assert local.instance_id not in {run[0] for run in recorded()}, "two holders at once"

    child.kill()
    killed = time.time()
    wait_for(lambda: local.instance_id in {run[0] for run in recorded()}, timeout=10)
    runs = sorted(recorded(), key=lambda run: run[1])
    mine = [run for run in runs if run[0] == local.instance_id]
    assert mine[0][1] - killed <= lease + interval + 0.5, mine[0][1] - killed
    assert_one_at_a_time(runs)
    owners = [run[0] for run in runs]
    first = owners.index(local.instance_id)
    assert set(owners[first:]) == {local.instance_id}, owners


def test_a_job_that_is_not_shared_runs_on_every_instance(memory_apps: Apps) -> None:
    runs = Runs()
    service = unique_name("jobs")
    started = [runs.app(shared=False) for _ in range(3)]
    for app in started:
        memory_apps.start(app, service)

    def each_ran_thrice() -> bool:
        counts = [sum(1 for run in runs.snapshot() if run[0] == app.instance_id) for app in started]
        return min(counts) >= 3

    wait_for(each_ran_thrice, timeout=10)


def test_lease_time_defaults_to_three_intervals_with_a_floor() -> None:
    def job() -> None:
        return None

    assert BackgroundTask("a", 1, job, shared=True).lease_time == LEASE_FLOOR
    assert BackgroundTask("a", 60, job, shared=True).lease_time == 180
    assert BackgroundTask("a", 60, job, shared=True, lease=5).lease_time == 5
    with pytest.raises(SetupError):
        BackgroundTask("a", 1, job, lease=5)
    with pytest.raises(SetupError):
        BackgroundTask("a", 1, job, shared=True, lease=0)


def test_a_blueprint_keeps_a_job_shared() -> None:
    blueprint = Blueprint("bp")

    @blueprint.background("tick", 2, shared=True, lease=7)
    def tick() -> None:
        return None

    app = Daebus("jobs")
    app.register_blueprint(blueprint)
    task = app.background_tasks["tick"]
    assert task.shared
    assert task.lease == 7
    assert tuple(task) == ("tick", 2.0, tick)
