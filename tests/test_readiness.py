"""Readiness: the health action, ``daebus health``, ``@app.health_check``, /healthz and /readyz."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result

from _apps import Apps
from _helpers import unique_name, wait_for
from _http import fetch, serve
from daebus import Blueprint, Daebus, DaebusHttp, SetupError, protocol, registry
from daebus.cli import cli
from daebus.runtime import readiness as readiness_module

pytestmark = pytest.mark.timeout(60)


def health(service: str, url: str, *args: str) -> Result:
    return CliRunner().invoke(
        cli, ["health", service, "--redis-url", url, *args], catch_exceptions=False
    )


class Switch:
    """A user check that passes until it is turned off (from the test's thread)."""

    def __init__(self) -> None:
        self.on = True

    def check(self) -> bool:
        return self.on


def test_every_service_answers_the_health_action(apps: Apps) -> None:
    app = Daebus("plain")
    service = apps.start(app)
    answer = apps.caller(service).send_request(protocol.HEALTH_ACTION, {})
    assert answer == {
        "service": service,
        "instance": app.instance_id,
        "ready": True,
        "state": "running",
        "reasons": [],
        "checks": {},
    }
    result = health(service, apps.url)
    assert result.exit_code == 0, result.output
    assert result.output == f"{service}: ready (instance {app.instance_id}); 1 instance running\n"


def test_a_failing_check_makes_the_service_not_ready(apps: Apps) -> None:
    app, switch = Daebus("checked"), Switch()
    app.add_health_check(switch.check, "database")

    @app.health_check
    async def queue_depth() -> None:
        await asyncio.sleep(0)

    service = apps.start(app)
    result = health(service, apps.url)
    assert result.exit_code == 0, result.output
    assert "  check database: ok\n  check queue_depth: ok\n" in result.output

    switch.on = False
    result = health(service, apps.url)
    assert result.exit_code == 1
    assert f"Error: {service} is not ready: check 'database' failed: returned False" in (
        result.output
    )
    answer = json.loads(health(service, apps.url, "--json").output)
    assert answer["ready"] is False
    assert answer["checks"] == {"database": "returned False", "queue_depth": "ok"}
    assert answer["instance"] == app.instance_id


def test_a_check_that_raises_or_hangs_fails_with_its_reason(
    apps: Apps, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readiness_module, "CHECK_TIMEOUT", 0.2)
    release = threading.Event()
    app = Daebus("failing")

    @app.health_check("disk")
    def disk() -> None:
        raise OSError("disk full")

    @app.health_check("slow")
    def slow() -> None:
        release.wait(10)

    service = apps.start(app)
    try:
        answer = registry.service_health(service, apps.url, timeout=5)
    finally:
        release.set()
    assert answer["ready"] is False
    assert answer["checks"] == {"disk": "disk full", "slow": "no answer within 0.2 s"}
    assert answer["reasons"] == [
        "check 'disk' failed: disk full",
        "check 'slow' failed: no answer within 0.2 s",
    ]


def test_a_check_raising_what_no_check_should_fails_and_the_service_runs_on(
    apps: Apps, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readiness_module, "CHECK_TIMEOUT", 0.5)
    app = Daebus("odd-checks")

    @app.health_check("interrupted")
    def interrupted() -> None:
        raise KeyboardInterrupt("not from a terminal")

    @app.health_check("cancelled")
    async def cancelled() -> None:
        raise asyncio.CancelledError

    @app.health_check("slow_async")
    async def slow_async() -> None:
        await asyncio.sleep(10)

    app.add_action("ping", lambda: "pong")
    service = apps.start(app)
    answer = registry.service_health(service, apps.url, timeout=5)
    assert answer["checks"] == {
        "interrupted": "not from a terminal",
        "cancelled": "cancelled",
        "slow_async": "no answer within 0.5 s",
    }
    assert apps.caller(service, timeout=5).send_request("ping") == "pong"
    assert app.is_running()


def test_a_hung_check_is_not_started_again_while_it_runs(
    apps: Apps, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each run of a hung `def` check holds a job thread: a probe every few seconds would
    # take them all, and the service's `def` jobs and stop hooks would never run again.
    monkeypatch.setattr(readiness_module, "CHECK_TIMEOUT", 0.1)
    release, probed, ticked = threading.Event(), threading.Event(), threading.Event()
    runs = []
    app = Daebus("stuck")

    @app.background("tick", 0.05)
    def tick() -> None:
        if probed.is_set():
            ticked.set()

    @app.health_check("stuck")
    def stuck() -> None:
        runs.append(1)
        release.wait(30)

    service = apps.start(app)
    try:
        for _ in range(10):  # more than the job threads
            answer = registry.service_health(service, apps.url, timeout=5)
            assert answer["checks"] == {"stuck": "no answer within 0.1 s"}
        assert len(runs) == 1
        probed.set()
        assert ticked.wait(10), "a def job found no thread"
    finally:
        release.set()
    wait_for(lambda: registry.service_health(service, apps.url, timeout=5)["ready"], timeout=10)
    assert len(runs) >= 2


def test_a_service_busy_to_the_full_still_answers_its_health(apps: Apps) -> None:
    # Busy is not unready: a probe queued behind the work timed out, as if nobody ran.
    release = threading.Event()
    app = Daebus("full", max_in_flight=1, max_queued=1)

    @app.action("slow")
    def slow() -> None:
        release.wait(30)

    service = apps.start(app)
    caller = apps.caller(service)
    calls = concurrent.futures.ThreadPoolExecutor(2)
    pending = [calls.submit(caller.send_request, "slow", {}, timeout=30) for _ in range(2)]
    try:
        wait_for(lambda: app._runtime.admission.requests, timeout=10)  # type: ignore[union-attr]
        answer = registry.service_health(service, apps.url, timeout=5)
        assert answer["ready"] is True, answer
        assert answer["instance"] == app.instance_id
    finally:
        release.set()
    for request in pending:
        request.result(timeout=10)
    calls.shutdown()


def test_health_of_a_service_that_does_not_run(apps: Apps) -> None:
    service = unique_name("nobody")
    result = health(service, apps.url)
    assert result.exit_code == 1
    assert f"no instance of {service!r} is running" in result.output
    answer = json.loads(health(service, apps.url, "--json").output)
    assert answer == {
        "service": service,
        "ready": False,
        "reasons": [f"no instance of {service!r} is running"],
        "checks": {},
    }


def test_a_service_that_does_not_answer_in_time_is_not_ready(apps: Apps, redis_url: str) -> None:
    # Something subscribes to the service's channel and never answers (a hung instance).
    service = unique_name("hung")
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    pubsub.subscribe(service)
    try:
        started = time.monotonic()
        result = health(service, apps.url, "--timeout", "0.5")
        assert result.exit_code == 1
        assert f"no instance of {service!r} answered within 0.5 s" in result.output
        assert time.monotonic() - started < 5
    finally:
        pubsub.close()
        client.close()


def test_an_older_service_answering_unknown_action_counts_as_running(redis_url: str) -> None:
    # A daebus from before the health action answers it so (0.0.31 does not answer).
    service = unique_name("old")
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    pubsub.subscribe(service)
    stop = threading.Event()

    def answer_like_0_0_31() -> None:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.05)
            if message is None or message["type"] != "message":
                continue
            request = json.loads(message["data"])
            error = f"Unknown action '{request['action']}' for service '{service}'"
            reply = {"status": "error", "payload": {"error": error}}
            client.publish(
                request["reply_to"],
                json.dumps({**reply, "request_id": request["request_id"], "final": True}),
            )

    thread = threading.Thread(target=answer_like_0_0_31, daemon=True)
    thread.start()
    try:
        answer = registry.service_health(service, redis_url, timeout=5)
    finally:
        stop.set()
        thread.join(5)
        pubsub.close()
        client.close()
    assert answer["ready"] is True
    assert "older daebus" in answer["note"]


@pytest.mark.parametrize(
    "forged",
    [
        {"ready": True, "instance": "i\rFORGED", "checks": ["a"], "state": 5},
        {"ready": True, "instance": ["x"], "checks": {"c\rFORGED": {"x": 1}}},
        {"ready": False, "reasons": [1, None, "r\rFORGED"], "checks": "x"},
        {"ready": False, "reasons": "not a list"},
    ],
)
def test_a_forged_health_answer_is_shown_escaped(redis_url: str, forged: dict[str, Any]) -> None:
    # Whatever subscribes to a service's channel can answer for it.
    service = unique_name("forger")
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    pubsub.subscribe(service)
    stop = threading.Event()

    def answer_forged() -> None:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.05)
            if message is None or message["type"] != "message":
                continue
            request = json.loads(message["data"])
            reply = {"status": "success", "payload": forged, "final": True}
            client.publish(
                request["reply_to"], json.dumps({**reply, "request_id": request["request_id"]})
            )

    thread = threading.Thread(target=answer_forged, daemon=True)
    thread.start()
    try:
        for args in ((), ("--json",)):
            result = health(service, redis_url, *args)
            assert result.exit_code == (0 if forged["ready"] else 1), result.output
            assert "\r" not in result.output
    finally:
        stop.set()
        thread.join(5)
        pubsub.close()
        client.close()


def test_reserved_action_names_are_refused() -> None:
    app = Daebus("reserved")
    with pytest.raises(SetupError, match="daebus's own"):
        app.add_action(protocol.HEALTH_ACTION, lambda: None)
    with pytest.raises(SetupError, match="daebus's own"):
        app.action("daebus:anything")(lambda: None)


def test_blueprints_bring_their_health_checks(apps: Apps) -> None:
    blueprint = Blueprint("parts")

    @blueprint.health_check
    def part() -> bool:
        return False

    app = Daebus("assembled")
    app.register_blueprint(blueprint)
    service = apps.start(app)
    answer = registry.service_health(service, apps.url)
    assert answer["checks"] == {"part": "returned False"}


# -- /healthz and /readyz ------------------------------------------------------------------


def test_healthz_and_readyz(apps: Apps) -> None:
    app, switch = Daebus("probed"), Switch()
    app.add_health_check(switch.check, "upstream")
    component = serve(apps, app, health=True)

    alive = fetch(component.url, "/healthz")
    assert alive.status == 200
    assert alive.json() == {"status": "alive", "service": app.service, "instance": app.instance_id}
    assert alive.header("Cache-Control") == "no-store"
    ready = fetch(component.url, "/readyz")
    assert ready.status == 200
    assert ready.json()["ready"] is True
    assert fetch(component.url, "/readyz", "HEAD").status == 200

    switch.on = False
    not_ready = fetch(component.url, "/readyz")
    assert not_ready.status == 503
    assert not_ready.json()["reasons"] == ["check 'upstream' failed: returned False"]
    assert fetch(component.url, "/healthz").status == 200  # alive, though not ready
    assert fetch(component.url, "/readyz", "POST").status == 405


def test_probes_at_once_share_one_run_of_the_checks(apps: Apps) -> None:
    # /readyz is not behind max_concurrent: a flood of probes must not become a flood
    # of the checks' own queries.
    runs, gate = [], threading.Event()
    app = Daebus("flooded")

    @app.health_check
    async def database() -> None:
        runs.append(1)
        await asyncio.to_thread(gate.wait, 10)

    component = serve(apps, app, health=True)
    probes = concurrent.futures.ThreadPoolExecutor(10)
    answers = [probes.submit(fetch, component.url, "/readyz") for _ in range(10)]
    try:
        wait_for(lambda: len(component._dispatcher._active) == 10, timeout=10)
    finally:
        gate.set()
    assert [answer.result(timeout=10).status for answer in answers] == [200] * 10
    probes.shutdown()
    assert len(runs) == 1


def test_no_health_paths_unless_asked(apps: Apps) -> None:
    app = Daebus("unprobed")
    component = serve(apps, app)
    assert fetch(component.url, "/healthz").status == 404
    assert fetch(component.url, "/readyz").status == 404


def test_readyz_says_stopping_while_the_service_stops(apps: Apps) -> None:
    app = Daebus("stopping")
    release = threading.Event()
    entered = threading.Event()

    @app.action("slow")
    def slow() -> None:
        entered.set()
        release.wait(10)

    component = app.attach(DaebusHttp(port=0, host="127.0.0.1", health=True))
    service = apps.start(app)
    runtime: Any = app._runtime
    caller = apps.caller(service)
    calling = threading.Thread(target=lambda: caller.send_request("slow", {}, timeout=10))
    calling.start()
    try:
        assert entered.wait(5)
        url = component.url
        assert fetch(url, "/readyz").status == 200
        stopper = threading.Thread(target=app.stop)
        stopper.start()
        wait_for(lambda: not app.is_running())
        answer = asyncio.run_coroutine_threadsafe(
            readiness_module.readiness(runtime), runtime.loop
        ).result(5)
        assert answer["ready"] is False
        assert answer["state"] == "stopping"
        assert answer["reasons"] == ["the service is stopping"]
    finally:
        release.set()
        calling.join(10)
    stopper.join(15)
