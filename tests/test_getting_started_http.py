"""The HTTP examples of the getting-started guide (examples/getting_started/), served for real."""

from __future__ import annotations

from typing import Any

import pytest

from _apps import Apps
from _helpers import fire_now, load_example, wait_for, wait_log
from _http import fetch, serve


def test_hello_over_http_takes_the_name_from_the_query(
    apps: Apps, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_example("getting_started/http_hello.py", monkeypatch)
    base = serve(apps, module.app).url
    reply = fetch(base, "/hello?name=Web")
    assert (reply.status, reply.json()) == (200, {"message": "Hello, Web!"})
    assert fetch(base, "/hello").json() == {"message": "Hello, World!"}
    # The same service still answers over Redis.
    caller = apps.caller(module.app.service)
    assert caller.send_request("hello", {"name": "Daebus"}) == {"message": "Hello, Daebus!"}


def test_stats_reporter_logs_uptime_beside_a_status_route(
    apps: Apps, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    module = load_example("getting_started/stats_reporter.py", monkeypatch)
    assert module.app.background_tasks["stats_reporter"].interval == 30
    fire_now(module.app, "stats_reporter")
    base = serve(apps, module.app).url
    wait_log(logs, "Service uptime:")
    reply = fetch(base, "/status")
    body: dict[str, Any] = reply.json()
    assert reply.status == 200
    assert (body["service"], body["status"]) == ("stats-service", "running")
    assert body["uptime"] >= 0


def test_complete_example_counts_requests_and_hears_its_own_broadcast(
    apps: Apps, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_example("getting_started/complete.py", monkeypatch)
    base = serve(apps, module.app).url
    caller = apps.caller(module.app.service)
    assert caller.send_request("get_metrics")["requests"] == 1
    assert fetch(base, "/metrics").json()["requests"] == 1
    assert module.metrics["events"] == 0
    fire_now(module.app, "metrics_reporter")
    wait_for(lambda: module.metrics["events"] >= 1)
    assert fetch(base, "/metrics").json()["events"] >= 1
