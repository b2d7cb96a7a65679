"""Every example in examples/ runs and does what its document says, against a real server.

Two ways of running an example:

- as a subprocess, ``python examples/.../x.py`` exactly as a user would, which also proves
  the file's ``app.run(...)`` works and that SIGTERM stops it with exit status 0;
- imported in-process (a fresh module each time) and started with ``app.start(...)``, when
  a test must make a 60 s job fire now (``app.background_tasks[name].interval = ...``),
  shorten a thread's sleeps, swap in a stand-in for a third-party module, or look at the
  example's module state.

Nothing here waits a fixed time for something to happen: every wait polls a deadline.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import queue
import re
import signal
import sys
import threading
import time
import types
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

import daebus
from _helpers import (
    EXAMPLES,
    FAST,
    ServiceProcess,
    Subscription,
    count_logs,
    fire_now,
    load_example,
    wait_for,
    wait_log,
)
from daebus import Daebus, DaebusCaller, request, response

# -- running examples -------------------------------------------------------------------


@contextlib.contextmanager
def started(app: Daebus, service: str, redis_url: str) -> Iterator[Daebus]:
    """Run `app` as `service` on a background thread for the block, then stop it."""
    app.start(service, redis_url=redis_url)
    try:
        yield app
    finally:
        app.stop()


@contextlib.contextmanager
def example_service(
    relpath: str, service: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[types.ModuleType]:
    """Import an example and run its ``app`` in-process as `service`; yields the module."""
    module = load_example(relpath, monkeypatch)
    with started(module.app, service, redis_url):
        yield module


@contextlib.contextmanager
def service_process(
    relpath: str, redis_url: str, ready: str | None = None, stop_timeout: float = 10.0
) -> Iterator[ServiceProcess]:
    """Run ``python examples/<relpath>``; wait until `ready` has a subscriber.

    When the block ends normally the process gets SIGTERM and must exit with status 0.
    """
    with ServiceProcess(EXAMPLES / relpath, redis_url=redis_url) as proc:
        if ready is not None:
            proc.wait_ready(ready)
        yield proc
        code = proc.terminate(signal.SIGTERM, timeout=stop_timeout)
        assert code == 0, f"exit status {code} after SIGTERM\n{proc.output()}"


def run_script(relpath: str, redis_url: str, timeout: float = 30.0) -> str:
    """Run a one-off example script to its end; returns what it printed."""
    with ServiceProcess(EXAMPLES / relpath, redis_url=redis_url) as proc:
        code = proc.wait(timeout)
        assert code == 0, f"exit status {code}\n{proc.output()}"
        return proc.stdout()


def caller(service: str, redis_url: str, timeout: float = 10.0) -> DaebusCaller:
    """A caller for `service` on the test server (use it as a context manager)."""
    return DaebusCaller(service, redis_url=redis_url, timeout=timeout)


def publish(redis_client: redis.Redis, channel: str, payload: dict[str, Any]) -> int:
    """Publish a JSON broadcast the way any other program would; returns the receivers."""
    return int(redis_client.publish(channel, json.dumps(payload)))


class QuickTime:
    """The `time` module with every sleep cut to FAST seconds.

    Put in place of an example module's ``time`` so that a thread which sleeps 10 s or
    60 s between rounds loops quickly and notices at once that the service stops.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(min(seconds, FAST))


# -- threads of an example ---------------------------------------------------------------


def thread_stopped(app: Daebus, name: str) -> None:
    """The app's ``@thread`` task `name` has ended."""
    wait_for(
        lambda: not app.threads[name].is_alive(),
        timeout=10.0,
        message=f"thread {name!r} still running after the service stopped",
    )


# -- stand-ins for third-party modules some examples import ----------------------------


def fake_requests(outcomes: dict[str, int | Exception]) -> types.ModuleType:
    """Stand-in for `requests`: ``get(url)`` answers with the status given for that URL."""
    module = types.ModuleType("requests")

    def get(url: str, timeout: float | None = None) -> Any:
        outcome = outcomes[url]
        if isinstance(outcome, Exception):
            raise outcome
        return types.SimpleNamespace(status_code=outcome)

    module.get = get
    return module


class EchoWebSocketApp:
    """Stand-in for websocket-client's ``WebSocketApp``: a connection to an echo server.

    ``run_forever`` opens the connection and blocks until ``close()``, as the real one
    blocks until the connection drops; ``send`` comes straight back to ``on_message``.
    """

    def __init__(
        self,
        url: str,
        on_open: Any = None,
        on_message: Any = None,
        on_error: Any = None,
        on_close: Any = None,
        **_: Any,
    ) -> None:
        self.url = url
        self.on_open = on_open
        self.on_message = on_message
        self.on_error = on_error
        self.on_close = on_close
        self._closed = threading.Event()

    def run_forever(self, **_: Any) -> None:
        if self.on_open is not None:
            self.on_open(self)
        self._closed.wait()
        if self.on_close is not None:
            self.on_close(self, 1000, "closed")

    def send(self, data: str) -> None:
        if self._closed.is_set():
            raise ConnectionError("the connection is closed")
        self.on_message(self, data)

    def close(self, **_: Any) -> None:
        self._closed.set()


def fake_psutil(cpu: float = 12.5, memory: float = 40.0, disk: float = 55.0) -> types.ModuleType:
    """Stand-in for `psutil` with fixed figures (used only when psutil is not installed)."""
    module = types.ModuleType("psutil")
    module.cpu_percent = lambda *a, **k: cpu
    module.virtual_memory = lambda: types.SimpleNamespace(percent=memory)
    module.disk_usage = lambda path: types.SimpleNamespace(percent=disk)
    return module


# -- every service example starts with `python x.py` and stops on SIGTERM -------------------

# The examples tested in-process below, run once as a user would. Those tested as a
# subprocess anyway are not repeated here; those without any channel to wait for
# (only jobs or threads) cannot show from outside that they are up, and are covered
# in-process.
SERVICES = [
    ("messaging/event_listener.py", "system_events"),
    ("messaging/data_processor.py", "data_processor"),
    ("overview/key_components.py", "overview_service"),
    ("task_scheduler/adaptive_cleanup.py", "adaptive_cleanup_service"),
    ("task_scheduler/one_time.py", "one_time_service"),
    ("task_scheduler/data_refresh.py", "data_service"),
    ("blueprint/features.py", "blueprint_service"),
    ("concurrency/my_service.py", "my_service"),
    ("concurrency/concurrent_service.py", "concurrent_service"),
]


@pytest.mark.parametrize(("relpath", "channel"), SERVICES, ids=[p for p, _ in SERVICES])
def test_service_runs_as_a_script_and_stops_on_sigterm(
    redis_url: str, relpath: str, channel: str
) -> None:
    with service_process(relpath, redis_url, ready=channel, stop_timeout=15.0):
        pass


# -- messaging guide (examples/messaging/) ---------------------------------------------


def test_messaging_system_monitor_answers_get_status(redis_url: str) -> None:
    with (
        service_process("messaging/system_monitor.py", redis_url, ready="system_monitor"),
        caller("system_monitor", redis_url) as monitor,
    ):
        assert monitor.send_request("get_status", {"verbose": True}) == {
            "status": "healthy",
            "uptime": 3600,
            "memory_usage": "128MB",
        }


def test_messaging_event_listener_receives_system_events(
    redis_url: str,
    redis_client: redis.Redis,
    logs: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with example_service("messaging/event_listener.py", "event_listener", redis_url, monkeypatch):
        event = {"type": "config_changed", "data": {"log_level": "debug"}}
        assert publish(redis_client, "system_events", event) >= 1
        wait_log(logs, "Received system event: config_changed")
        assert publish(redis_client, "system_events", {"type": "shutdown"}) >= 1
        wait_log(logs, "Received system event: shutdown")


def test_messaging_web_service_broadcasts_heartbeats(
    redis_url: str, logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        example_service("messaging/web_service.py", "web_service", redis_url, monkeypatch) as m,
        Subscription(redis_url, "monitoring") as monitoring,
    ):
        fire_now(m.app, "heartbeat")
        heartbeat = monitoring.get_json()
        assert heartbeat["type"] == "heartbeat"
        assert heartbeat["service"] == "web_service"
        assert heartbeat["status"] == "operational"
        assert abs(heartbeat["timestamp"] - time.time()) < 60
        # broadcast.send returns the number of receivers: at least our subscription.
        sent = wait_log(logs, "Heartbeat sent to")
        match = re.fullmatch(r"Heartbeat sent to (\d+) listeners", sent)
        assert match is not None, sent
        assert int(match.group(1)) >= 1
        assert count_logs(logs, "Failed to send heartbeat") == 0


def test_messaging_request_object(redis_url: str) -> None:
    with (
        service_process("messaging/request_object.py", redis_url, ready="request_service"),
        caller("request_service", redis_url) as service,
    ):
        payload = {"user_id": "user42", "type": "report"}
        assert service.send_request("process_data", payload) == {"processed": True}


def test_messaging_create_user(redis_url: str) -> None:
    with (
        service_process("messaging/create_user.py", redis_url, ready="user_service"),
        caller("user_service", redis_url) as users,
    ):
        before = time.time()
        user = users.send_request("create_user", {"name": "Ada", "email": "ada@example.com"})
        assert user["id"] == "user123"
        assert user["name"] == "Ada"
        assert before - 60 < user["created_at"] < time.time() + 60


def test_messaging_fetch_record_errors(redis_url: str) -> None:
    with (
        service_process("messaging/fetch_record.py", redis_url, ready="record_service"),
        caller("record_service", redis_url) as records,
    ):
        assert records.send_request("fetch_record", {"id": "rec1"}) == {
            "id": "rec1",
            "name": "First record",
        }
        with pytest.raises(daebus.RemoteError) as missing:
            records.send_request("fetch_record", {})
        assert str(missing.value) == "Missing record ID"
        with pytest.raises(daebus.RemoteError) as unknown:
            records.send_request("fetch_record", {"id": "rec404"})
        assert str(unknown.value) == "Record not found: rec404"
        # response.error(e) with an exception sends str(e): a list id is unhashable.
        with pytest.raises(daebus.RemoteError) as failed:
            records.send_request("fetch_record", {"id": ["rec1"]})
        assert "unhashable type" in str(failed.value)


def test_messaging_streaming_reports_progress_in_order(redis_url: str) -> None:
    with (
        service_process("messaging/streaming.py", redis_url, ready="dataset_service"),
        caller("dataset_service", redis_url) as datasets,
    ):
        parts: list[Any] = []
        result = datasets.send_request(
            "process_large_dataset", {"dataset": list(range(250))}, on_progress=parts.append
        )
        assert parts == [
            {"status": "processing", "progress": 0},
            {"status": "processing", "progress": 40.0},
            {"status": "processing", "progress": 80.0},
        ]
        assert result == {"status": "complete", "progress": 100, "total_processed": 250}

        parts.clear()
        result = datasets.send_request(
            "process_large_dataset", {"dataset": []}, on_progress=parts.append
        )
        assert parts == [{"status": "processing", "progress": 0}]
        assert result == {"status": "complete", "progress": 100, "total_processed": 0}


def test_messaging_register_user_calls_two_services_and_survives_close(redis_url: str) -> None:
    emails: list[dict[str, Any]] = []
    notifications = Daebus("notification_service_for_tests")

    @notifications.action("send_email")
    def send_email() -> Any:
        if not request.payload.get("email"):
            return response.error("No email address")
        emails.append(request.payload)
        return response.send({"sent": True, "to": request.payload["email"]})

    with (
        service_process("messaging/create_user.py", redis_url, ready="user_service"),
        started(notifications, "notification_service", redis_url),
        service_process("messaging/register_user.py", redis_url, ready="registration_service"),
        caller("registration_service", redis_url) as registration,
    ):
        # The example closes its module-level callers after every request; the second
        # registration only works because a closed caller reconnects on its next call.
        for name in ("Ada", "Grace"):
            email = f"{name.lower()}@example.com"
            result = registration.send_request("register_user", {"name": name, "email": email})
            assert result["user"]["id"] == "user123"
            assert result["user"]["name"] == name
            assert result["notification"] == {"sent": True, "to": email}
        assert emails == [
            {"user_id": "user123", "template": "welcome", "email": "ada@example.com"},
            {"user_id": "user123", "template": "welcome", "email": "grace@example.com"},
        ]

        # An error reply from the notification service raises inside the handler.
        with pytest.raises(daebus.RemoteError) as failed:
            registration.send_request("register_user", {"name": "Nobody"})
        assert str(failed.value) == "Registration failed: No email address"


def test_messaging_send_to_service_delivers_the_fields_to_the_action(redis_url: str) -> None:
    received: queue.Queue[Any] = queue.Queue()
    logger_service = Daebus("logger_service_for_tests")

    @logger_service.action("log_event")
    def log_event() -> None:
        received.put(request.payload)

    with started(logger_service, "logger_service", redis_url):
        run_script("messaging/send_to_service.py", redis_url)
        event = received.get(timeout=5)
    assert event["level"] == "info"
    assert event["message"] == "System started successfully"
    assert abs(event["timestamp"] - time.time()) < 60


def test_messaging_fire_and_forget_reaches_the_action(redis_url: str) -> None:
    received: queue.Queue[Any] = queue.Queue()
    metrics_service = Daebus("metrics_service_for_tests")

    @metrics_service.action("record_metric")
    def record_metric() -> None:
        received.put(request.payload)

    with started(metrics_service, "metrics_service", redis_url):
        run_script("messaging/fire_and_forget.py", redis_url)
        metric = received.get(timeout=5)
    assert metric == {
        "name": "api_request",
        "value": 1,
        "tags": {"endpoint": "/users", "method": "GET"},
    }


def test_messaging_broadcast_events_from_a_script(redis_url: str) -> None:
    with Subscription(redis_url, "user_events") as user_events:
        run_script("messaging/broadcast_events.py", redis_url)
        event = user_events.get_json()
    assert event["type"] == "user_registered"
    assert event["user_id"] == "user123"
    assert abs(event["timestamp"] - time.time()) < 60


def test_messaging_blueprint_service_and_documented_message_formats(
    redis_url: str, redis_client: redis.Redis
) -> None:
    with service_process("messaging/blueprint_service.py", redis_url, ready="user_service") as svc:
        svc.wait_ready("user_events")  # the blueprint's listener is subscribed too
        with caller("user_service", redis_url) as users:
            assert users.send_request("get_user", {"id": "user7"}) == {
                "id": "user7",
                "name": "Example User",
            }

        # "Standard Request Format", published as written in the guide, gets an answer
        # in the "Standard Response Format" on its reply_to channel.
        documented_request = {
            "action": "get_user",
            "payload": {"id": "user123"},
            "reply_to": "caller_123456",
            "request_id": "req_789",
        }
        with Subscription(redis_url, "caller_123456") as replies:
            assert publish(redis_client, "user_service", documented_request) >= 1
            reply = replies.get_json()
        assert reply["status"] == "success"
        assert reply["payload"] == {"id": "user123", "name": "Example User"}
        assert reply["request_id"] == "req_789"
        assert reply["final"] is True

        assert publish(redis_client, "user_events", {"type": "user_updated"}) >= 1


def test_messaging_cleanup_job_logs_with_direct_logger(
    redis_url: str, logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with example_service(
        "messaging/cleanup_job.py", "cleanup_service", redis_url, monkeypatch
    ) as m:
        assert count_logs(logs, "Cleanup job completed") == 0  # hourly: not yet
        fire_now(m.app, "cleanup")
        wait_log(logs, "Cleanup job completed")


def test_messaging_complete_example_data_processor(
    redis_url: str,
    redis_client: redis.Redis,
    logs: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with (
        example_service(
            "messaging/data_processor.py", "data_processor", redis_url, monkeypatch
        ) as m,
        Subscription(redis_url, "service_status", "monitoring") as broadcasts,
        caller("data_processor", redis_url) as processor,
    ):
        status = processor.send_request("get_status", {})
        assert status["status"] == "healthy"
        assert status["requests_handled"] == 1
        assert status["uptime"] >= 0
        assert processor.send_request("get_status", {})["requests_handled"] == 2

        result = processor.send_request("process_data", {"data": [1, 2, 3.5]})
        assert result["input_size"] == 3
        assert result["result"] == 6.5
        assert abs(result["timestamp"] - time.time()) < 60
        wait_log(logs, "Processed 3 data points, result: 6.5")

        with pytest.raises(daebus.RemoteError) as empty:
            processor.send_request("process_data", {})
        assert str(empty.value) == "No data provided"
        with pytest.raises(daebus.RemoteError) as bad:
            processor.send_request("process_data", {"data": [1, "two"]})
        assert str(bad.value).startswith("Processing failed: unsupported operand type")

        # A shutdown request on system_events: the status changes and is broadcast.
        assert publish(redis_client, "system_events", {"type": "shutdown_request"}) >= 1
        announced = broadcasts.get_json_matching(lambda p: p.get("status") == "shutting_down")
        assert announced["service"] == "data_processor"
        assert processor.send_request("get_status", {})["status"] == "shutting_down"

        # The minutely status report, made to fire now.
        fire_now(m.app, "status_reporter")
        report = broadcasts.get_json_matching(lambda p: "metrics" in p)
        assert report["service"] == "data_processor"
        assert report["status"] == "shutting_down"
        assert set(report["metrics"]) == {"cpu", "memory_mb", "uptime", "requests"}
        assert 0.1 <= report["metrics"]["cpu"] <= 0.9
        assert 100 <= report["metrics"]["memory_mb"] <= 500
        assert report["metrics"]["requests"] == 3
        wait_log(logs, "Status report sent: CPU")


def test_messaging_debug_service_and_check_script(redis_url: str) -> None:
    with service_process("messaging/debug_service.py", redis_url, ready="my_service") as svc:
        printed = run_script("messaging/check_service.py", redis_url)
        assert "Response: {'status': 'healthy'}" in printed.splitlines()
        # debug=True logs the message flow, where a user running the service sees it.
        wait_for(
            lambda: "get_status" in svc.stdout() + svc.stderr(),
            message=f"debug=True showed nothing about the get_status request\n{svc.output()}",
        )


# -- overview (examples/overview/) ------------------------------------------------------


def test_overview_key_components(
    redis_url: str,
    redis_client: redis.Redis,
    logs: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with (
        example_service(
            "overview/key_components.py", "overview_service", redis_url, monkeypatch
        ) as m,
        caller("overview_service", redis_url) as overview,
    ):
        assert overview.send_request("get_status", {}) == {"status": "healthy", "uptime": 3600}
        # The listener is subscribed and takes the event in its stride.
        assert publish(redis_client, "system_events", {"type": "shutdown"}) >= 1
        assert overview.send_request("get_status", {}) == {"status": "healthy", "uptime": 3600}
        fire_now(m.app, "cleanup")
        wait_log(logs, "Cleanup completed")


# -- getting started ----------------------------------------------------------------------


def test_getting_started_hello_service_and_client(redis_url: str) -> None:
    with service_process("getting_started/hello_service.py", redis_url, ready="hello-service"):
        lines = run_script("getting_started/hello_client.py", redis_url).splitlines()
    daebus_line = lines.index("{'message': 'Hello, Daebus!'}")
    world_line = lines.index("{'message': 'Hello, World!'}")
    assert daebus_line < world_line


def test_getting_started_on_start_registers_the_service(redis_url: str) -> None:
    with (
        Subscription(redis_url, "service_registry") as registry,
        service_process("getting_started/service_registration.py", redis_url),
    ):
        announcement = registry.get_json(timeout=10)
    assert announcement["type"] == "service_started"
    assert announcement["service"] == "my-service"
    assert announcement["capabilities"] == ["data_processing", "api"]
    assert abs(announcement["timestamp"] - time.time()) < 60


def test_getting_started_service_to_service(redis_url: str) -> None:
    data_service = Daebus("data_service_for_tests")

    @data_service.action("get_user")
    def get_user() -> Any:
        return response.send({"user_id": request.payload["user_id"], "name": "Ada"})

    with (
        started(data_service, "data-service", redis_url),
        service_process("getting_started/process_user.py", redis_url, ready="user-processor"),
        caller("user-processor", redis_url) as processor,
    ):
        assert processor.send_request("process_user", {"user_id": "u1"}) == {
            "user": {"user_id": "u1", "name": "Ada"},
            "processed": True,
        }


# -- task-scheduler guide -----------------------------------------------------------------


def test_task_scheduler_health_check(
    redis_url: str, logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    relpath = "task_scheduler/monitor_service.py"
    with example_service(relpath, "monitor_service", redis_url, monkeypatch) as m:
        assert m.app.background_tasks["health_check"].interval == 60
        fire_now(m.app, "health_check")
        wait_log(logs, "Health check completed: ok")


def test_task_scheduler_metrics_reporter_reads_and_resets_the_counter(
    redis_url: str, logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    relpath = "task_scheduler/metrics_reporter.py"
    with example_service(relpath, "request_metrics", redis_url, monkeypatch) as m:
        with m.counter_lock:
            m.request_counter = 7
        fire_now(m.app, "metrics_reporter")
        wait_log(logs, "Handled 7 requests in the last 5 minutes")
        assert m.request_counter == 0


def test_task_scheduler_cleanup_handles_its_errors_and_keeps_running(
    redis_url: str, logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_example("task_scheduler/cleanup.py", monkeypatch)
    runs: list[int] = []

    def delete_old_records() -> int:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("database is locked")
        return 3

    monkeypatch.setattr(module, "delete_old_records", delete_old_records)
    with started(module.app, "cleanup_service", redis_url):
        fire_now(module.app, "cleanup")
        wait_log(logs, "Cleanup failed: database is locked")
        wait_log(logs, "Cleanup completed: 3 records removed")


def test_task_scheduler_dynamic_interval_reschedules_the_job(
    redis_url: str, logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    relpath = "task_scheduler/adaptive_cleanup.py"
    with (
        example_service(relpath, "adaptive_cleanup_service", redis_url, monkeypatch) as m,
        caller("adaptive_cleanup_service", redis_url) as scheduler,
    ):
        task = m.app.background_tasks["adaptive_cleanup"]
        assert m.cleanup_task is task  # taken at import time, before the service ran
        assert task.interval == 3600
        assert count_logs(logs, "Adaptive cleanup ran") == 0

        reply = scheduler.send_request("adjust_schedule", {"interval": FAST})
        assert reply == {"updated": True, "new_interval": FAST}
        assert task.interval == FAST
        wait_for(
            lambda: count_logs(logs, "Adaptive cleanup ran") >= 3,
            message="the job did not run on its new interval",
        )


def test_task_scheduler_one_time_task(
    redis_url: str, logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        example_service("task_scheduler/one_time.py", "one_time_service", redis_url, monkeypatch),
        caller("one_time_service", redis_url) as scheduler,
    ):
        reply = scheduler.send_request("schedule_one_time", {"delay": FAST})
        assert reply == {"scheduled": True, "delay": FAST}
        wait_log(logs, "One-time task executed")


def test_task_scheduler_data_refresh(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with (
        example_service(
            "task_scheduler/data_refresh.py", "data_service", redis_url, monkeypatch
        ) as m,
        Subscription(redis_url, "data_events") as data_events,
        caller("data_service", redis_url) as data,
    ):
        assert data.send_request("get_data", {}) == {"data": {}, "last_updated": 0}
        fire_now(m.app, "data_refresh")
        event = data_events.get_json()
        assert event["type"] == "data_refreshed"
        reply = data.send_request("get_data", {})
        assert reply["data"] == {"temperature": 21.5, "humidity": 40}
        assert reply["last_updated"] >= event["timestamp"]


def test_task_scheduler_resource_monitor(
    redis_url: str, logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    if importlib.util.find_spec("psutil") is None:
        monkeypatch.setitem(sys.modules, "psutil", fake_psutil())
    relpath = "task_scheduler/resource_monitor.py"
    with (
        example_service(relpath, "resource_monitor", redis_url, monkeypatch) as m,
        Subscription(redis_url, "monitoring") as monitoring,
    ):
        fire_now(m.app, "system_monitor")
        metrics = monitoring.get_json()
        assert set(metrics) == {"cpu_percent", "memory_percent", "disk_percent", "timestamp"}
        for key in ("cpu_percent", "memory_percent", "disk_percent"):
            assert 0 <= metrics[key] <= 100

        # Over the thresholds, the job warns.
        monkeypatch.setattr(m.psutil, "cpu_percent", lambda *a, **k: 97.0)
        busy = types.SimpleNamespace(percent=90.0)
        monkeypatch.setattr(m.psutil, "virtual_memory", lambda: busy)
        wait_log(logs, "High CPU usage: 97.0%")
        wait_log(logs, "High memory usage: 90.0%")


def test_task_scheduler_db_cleanup(
    redis_url: str, logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_example("task_scheduler/db_cleanup.py", monkeypatch)
    cutoffs: list[Any] = []

    def delete_old_logs(cutoff: Any) -> int:
        cutoffs.append(cutoff)
        return 12

    monkeypatch.setattr(module, "delete_old_logs", delete_old_logs)
    with started(module.app, "db_cleanup_service", redis_url):
        assert module.app.background_tasks["db_cleanup"].interval == 86400
        fire_now(module.app, "db_cleanup")
        wait_log(logs, "Deleted 12 old log entries")
        wait_log(logs, "Deleted 0 temporary files")
        wait_log(logs, "Database optimized")
    age = time.time() - cutoffs[0].timestamp()
    assert 29 * 86400 < age < 31 * 86400


# -- threads guide --------------------------------------------------------------------------


def test_threads_worker_thread_runs_until_the_service_stops(
    redis_url: str, logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_example("threads/worker_thread.py", monkeypatch)
    with started(module.app, "worker_service", redis_url):
        wait_log(logs, "Worker thread started")
        wait_for(lambda: module.work_rounds >= 2, message="the worker did no work")
        assert count_logs(logs, "Worker thread stopped") == 0
    wait_log(logs, "Worker thread stopped")
    thread_stopped(module.app, "worker_thread")
    assert count_logs(logs, "Worker thread error") == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_threads_processor_cleans_up_when_the_service_is_stopped(
    redis_url: str, sig: signal.Signals
) -> None:
    with ServiceProcess(EXAMPLES / "threads/processor.py", redis_url=redis_url) as proc:
        wait_for(
            lambda: "Resources ready" in proc.stdout(),
            timeout=10.0,
            message=f"the processor thread did not start\n{proc.output()}",
        )
        assert "Resources cleaned up" not in proc.stdout()
        code = proc.terminate(sig)
        assert code == 0, proc.output()
        # The thread's `finally:` ran before the process exited.
        assert "Resources cleaned up" in proc.stdout(), proc.output()


def test_threads_connection_manager(
    redis_url: str, logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_example("threads/connection_manager.py", monkeypatch)
    monkeypatch.setattr(module, "time", QuickTime())
    opened: list[Any] = []

    def establish_connection(host: str) -> Any:
        connection = module.Connection(host)
        opened.append(connection)
        return connection

    monkeypatch.setattr(module, "establish_connection", establish_connection)
    with started(module.app, "connection_service", redis_url):
        wait_log(logs, "Connected to new host: db-primary")
        wait_log(logs, "Connected to new host: cache")
        # A dropped connection is made again on the next round.
        opened[0].active = False
        wait_log(logs, "Reconnected to db-primary")
        assert len([c for c in opened if c.host == "cache"]) == 1
    thread_stopped(module.app, "connection_manager")


def test_threads_data_collector_shares_data_with_an_action(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_example("threads/data_collector.py", monkeypatch)
    monkeypatch.setattr(module, "time", QuickTime())
    with (
        started(module.app, "data_collector_service", redis_url),
        caller("data_collector_service", redis_url) as collector,
    ):
        expected = {"temperature": 21.5, "humidity": 40}
        wait_for(
            lambda: collector.send_request("get_current_data", {}) == expected,
            message="get_current_data never returned the collected data",
        )
    thread_stopped(module.app, "data_collector")


def test_threads_monitoring_thread_logs(
    redis_url: str, logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_example("threads/monitoring.py", monkeypatch)
    monkeypatch.setattr(module, "time", QuickTime())
    with started(module.app, "monitoring_service", redis_url):
        wait_for(lambda: count_logs(logs, "System monitoring active") >= 2)
    thread_stopped(module.app, "monitoring")
    assert count_logs(logs, "Monitoring error") == 0


def test_threads_queue_processor(redis_url: str) -> None:
    with (
        service_process("threads/queue_processor.py", redis_url, ready="queue_service"),
        caller("queue_service", redis_url) as jobs,
    ):
        submitted = jobs.send_request("submit_job", {"value": 21})
        assert submitted["status"] == "queued"
        job_id = submitted["job_id"]

        def completed() -> Any:
            reply = jobs.send_request("check_job", {"job_id": job_id})
            assert reply["status"] in ("queued", "completed"), reply
            return reply if reply["status"] == "completed" else None

        done = wait_for(completed, message="the job was never processed")
        assert done == {
            "job_id": job_id,
            "status": "completed",
            "result": {"value": 21, "doubled": 42},
        }
        assert jobs.send_request("check_job", {"job_id": "nope"}) == {
            "job_id": "nope",
            "status": "not_found",
        }
        with pytest.raises(daebus.RemoteError) as missing:
            jobs.send_request("check_job", {})
        assert str(missing.value) == "Missing job_id parameter"


def test_threads_api_monitor(
    redis_url: str, logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No network here: `requests` is replaced by a stand-in answering per URL.
    outcomes: dict[str, int | Exception] = {
        "https://api.example.com/users/health": 200,
        "https://api.example.com/orders/health": 503,
        "https://api.example.com/inventory/health": ConnectionError("connection refused"),
    }
    monkeypatch.setitem(sys.modules, "requests", fake_requests(outcomes))
    module = load_example("threads/api_monitor.py", monkeypatch)
    monkeypatch.setattr(module, "time", QuickTime())
    with (
        started(module.app, "api_monitor_service", redis_url),
        caller("api_monitor_service", redis_url) as monitor,
    ):
        status = wait_for(
            lambda: (s := monitor.send_request("get_api_status", {})) and len(s) == 3 and s,
            message="the monitor never checked all three APIs",
        )
        assert status["users_api"]["status"] == "up"
        assert status["users_api"]["status_code"] == 200
        assert status["users_api"]["latency_ms"] >= 0
        assert status["orders_api"]["status"] == "degraded"
        assert status["orders_api"]["status_code"] == 503
        assert status["inventory_api"]["status"] == "down"
        assert status["inventory_api"]["error"] == "connection refused"
        wait_log(logs, "orders_api answered 503")
        wait_log(logs, "inventory_api is unreachable: connection refused")
    thread_stopped(module.app, "api_monitor")


def test_threads_websocket_client(
    redis_url: str, logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No network here: websocket-client is replaced by an in-memory echo connection.
    fake = types.ModuleType("websocket")
    fake.WebSocketApp = EchoWebSocketApp
    monkeypatch.setitem(sys.modules, "websocket", fake)
    module = load_example("threads/websocket_client.py", monkeypatch)
    monkeypatch.setattr(module, "time", QuickTime())
    app = module.app
    app.start("websocket_client_service", redis_url=redis_url)
    try:
        with caller("websocket_client_service", redis_url) as client:
            # on_open sent the auth message, which the echo server sent back.
            recent = wait_for(
                lambda: (r := client.send_request("get_recent_messages", {}))["count"] and r,
                message="no message ever came in on the connection",
            )
            assert recent["messages"][0] == {"type": "auth", "api_key": "demo-key"}

            alert = {"type": "alert", "message": "disk almost full"}
            sent = client.send_request("send_websocket_message", {"message": alert})
            assert sent == {"sent": True}
            wait_log(logs, "Alert received: disk almost full")
            recent = client.send_request("get_recent_messages", {})
            assert recent["count"] == 2
            assert recent["messages"][-1] == alert

            with pytest.raises(daebus.RemoteError) as empty:
                client.send_request("send_websocket_message", {})
            assert str(empty.value) == "No message provided"
    finally:
        # Like the real run_forever, the stand-in's blocks until the connection closes:
        # stop the service, then drop the connection so the thread can see running() false.
        stopper = threading.Thread(target=app.stop, name="stop-websocket-example")
        stopper.start()
        wait_for(lambda: not app.is_running(), message="the service did not begin to stop")
        if module.websocket_client is not None:
            module.websocket_client.close()
        stopper.join(30)
    assert not stopper.is_alive()
    # The thread's own shutdown code ran after its loop.
    wait_for(lambda: module.websocket_client is None)
    thread_stopped(app, "websocket_client")
    wait_log(logs, "WebSocket connection closed")


# -- blueprint guide ------------------------------------------------------------------------


def test_blueprint_features(
    redis_url: str,
    redis_client: redis.Redis,
    logs: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = load_example("blueprint/features.py", monkeypatch)
    with (
        started(module.app, "blueprint_service", redis_url),
        caller("blueprint_service", redis_url) as service,
    ):
        wait_log(logs, "User cache initialized")  # on_start
        wait_log(logs, "User activity monitor started")  # thread

        assert service.send_request("get_user", {"id": "u7"}) == {
            "id": "u7",
            "name": "Example User",
        }
        assert service.send_request("create_user", {}) == {"created": True}

        assert service.send_request("some_action", {"value": "7"}) == {"value": 7}
        with pytest.raises(daebus.RemoteError) as invalid:
            service.send_request("some_action", {"value": "seven"})
        assert str(invalid.value) == (
            "Invalid data: invalid literal for int() with base 10: 'seven'"
        )
        with pytest.raises(daebus.RemoteError) as unexpected:
            service.send_request("some_action", {})
        assert str(unexpected.value) == "An unexpected error occurred"
        wait_log(logs, "Unexpected error in some_action: 'value'")

        assert publish(redis_client, "user_events", {"type": "user_created", "user_id": "u7"})
        wait_log(logs, "User created: u7")
        assert publish(redis_client, "user_events", {"type": "user_updated", "user_id": "u7"})
        wait_log(logs, "User updated: u7")

        fire_now(module.app, "cleanup_expired_users")
        wait_log(logs, "Expired users cleaned up")
    wait_log(logs, "User activity monitor stopped")
    thread_stopped(module.app, "user_activity_monitor")


def test_blueprint_complete_example(redis_url: str) -> None:
    with (
        Subscription(redis_url, "user_events") as user_events,
        service_process("blueprint/app.py", redis_url, ready="user_service") as svc,
    ):
        svc.wait_ready("user_events", count=2)  # the blueprint's listener and ours
        with caller("user_service", redis_url) as users:
            user = users.send_request("create_user", {"email": "ada@example.com", "name": "Ada"})
            assert user["email"] == "ada@example.com"
            assert user["name"] == "Ada"
            assert user["id"].startswith("user_")
            assert user_events.get_json() == {"type": "user_created", "user_id": user["id"]}
            assert users.send_request("get_user", {"id": user["id"]}) == user

            with pytest.raises(daebus.RemoteError) as unknown:
                users.send_request("get_user", {"id": "nobody"})
            assert str(unknown.value) == "User nobody not found"
            with pytest.raises(daebus.RemoteError) as no_email:
                users.send_request("create_user", {"name": "Anonymous"})
            assert str(no_email.value) == "Email is required"

            with pytest.raises(daebus.RemoteError) as refused:
                users.send_request("login", {"email": "user@example.com", "password": "guess"})
            assert str(refused.value) == "Invalid email or password"
            login = users.send_request(
                "login", {"email": "user@example.com", "password": "password"}
            )
            assert login["expires_in"] == 3600
            assert users.send_request("verify_token", {"token": login["token"]}) == {
                "valid": True,
                "user_id": "user_1",
            }
            with pytest.raises(daebus.RemoteError) as invalid:
                users.send_request("verify_token", {"token": "forged"})
            assert str(invalid.value) == "Invalid or expired token"


def test_blueprint_user_cleanup_job(
    redis_url: str, logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    users_module = load_example("blueprint/blueprints/users.py", monkeypatch)
    app = Daebus("users_blueprint_for_tests")
    app.register_blueprint(users_module.users_bp)
    with started(app, "user_service", redis_url), caller("user_service", redis_url) as users:
        idle = users.send_request("create_user", {"email": "idle@example.com"})
        active = users.send_request("create_user", {"email": "active@example.com"})
        users_module.users[idle["id"]]["last_active"] = time.time() - 31 * 86400
        fire_now(app, "user_cleanup")
        wait_log(logs, "Removed 1 inactive users")
        with pytest.raises(daebus.RemoteError) as gone:
            users.send_request("get_user", {"id": idle["id"]})
        assert str(gone.value) == f"User {idle['id']} not found"
        assert users.send_request("get_user", {"id": active["id"]}) == active


# -- concurrency guide ----------------------------------------------------------------------


def test_concurrency_app_request_and_response_are_per_message(
    redis_url: str, logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_example("concurrency/my_service.py", monkeypatch)
    app = module.app
    assert app.max_workers == 20
    with started(app, "my_service", redis_url), caller("my_service", redis_url) as service:
        wait_for(lambda: module.batches_processed >= 1, message="the thread never looped")

        def process(i: int) -> Any:
            return service.send_request("process_data", {"n": i, "tag": f"message-{i}"})

        with ThreadPoolExecutor(max_workers=20) as pool:
            results = list(pool.map(process, range(60)))
        for i, result in enumerate(results):
            assert result["processed"] == {"n": i, "tag": f"message-{i}"}
        request_ids = [result["request_id"] for result in results]
        assert all(request_ids)
        assert len(set(request_ids)) == 60

        with ThreadPoolExecutor(max_workers=20) as pool:
            values = list(
                pool.map(lambda _: service.send_request("increment", {})["new_value"], range(20))
            )
        assert module.counter == 20
        assert max(values) == 20
        assert all(1 <= value <= 20 for value in values)
        assert count_logs(logs, "Data processor stopped") == 0
    # The no-argument thread loops on app.is_running(), which turned false.
    wait_log(logs, "Data processor stopped")
    thread_stopped(app, "data_processor")
    assert not app.is_running()


def test_concurrency_concurrent_service(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_example("concurrency/concurrent_service.py", monkeypatch)
    # The handler's sleep becomes a 20-party barrier: it only opens when all 20 messages
    # are being handled at the same moment, so this proves they run side by side
    # without timing anything (one at a time, the barrier breaks and they fail).
    barrier = threading.Barrier(20, timeout=10)
    slow_time = types.SimpleNamespace(
        time=time.time,
        sleep=lambda seconds: barrier.wait() if seconds == 0.5 else time.sleep(seconds),
    )
    monkeypatch.setattr(module, "time", slow_time)
    with (
        started(module.app, "concurrent_service", redis_url),
        caller("concurrent_service", redis_url, timeout=15) as service,
    ):

        def process(message_id: Any, process_time: Any = 0.5) -> Any:
            payload = {"id": message_id, "process_time": process_time}
            return service.send_request("process", payload)

        with ThreadPoolExecutor(max_workers=20) as pool:
            results = list(pool.map(process, range(20)))
        assert [result["id"] for result in results] == list(range(20))
        assert sorted(module.processed) == list(range(20))

        # A handler that raises answers its caller with an error and disturbs no other.
        with ThreadPoolExecutor(max_workers=3) as pool:
            failing = pool.submit(process, "bad", "not a number")
            others = [pool.submit(process, i, 0.2) for i in (100, 101)]
            with pytest.raises(daebus.RemoteError):
                failing.result()
            assert [future.result()["id"] for future in others] == [100, 101]
