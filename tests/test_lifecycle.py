"""Starting, stopping and surviving: Redis restarts, signals, jobs, threads, back-pressure.

A test named ``test_b<n>_...`` shows one of 0.0.31's bugs fixed; docs/compatibility.md
lists each bug with its test.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from _apps import Apps
from _helpers import QUIET, ServiceProcess, Subscription, unique_name, wait_for, wait_log
from daebus import (
    AsyncDaebusCaller,
    Daebus,
    DaebusCaller,
    DaebusError,
    ServiceBusyError,
    SetupError,
    TransportError,
    broadcast,
    protocol,
    request,
    response,
)
from daebus.runtime import instances as instances_module
from daebus.runtime.throttle import LogThrottle
from daebus.transport import _resp_blocking


# -- Redis going away ----------------------------------------------------------------
@pytest.mark.slow
def test_b2_service_and_caller_recover_after_redis_restarts(
    private_redis: Any, private_apps: Apps
) -> None:
    app = Daebus("survivor")
    heard: list[Any] = []
    channel = unique_name("heartbeat")

    @app.action("echo")
    def echo() -> Any:
        return request.payload

    @app.listen(channel)
    def on_heartbeat(data: Any) -> None:
        heard.append(data)

    stop_traffic = threading.Event()
    outcomes: list[str] = []
    try:
        service = private_apps.start(app)
        caller = private_apps.caller(service, timeout=1)
        assert caller.send_request("echo", 1) == 1

        def traffic() -> None:  # requests keep coming through the outage
            while not stop_traffic.is_set():
                try:
                    caller.send_request("echo", "t")
                    outcomes.append("ok")
                except DaebusError as exc:
                    outcomes.append(type(exc).__name__)
                    stop_traffic.wait(0.05)  # no busy loop while the server is down

        thread = threading.Thread(target=traffic, daemon=True)
        thread.start()
        wait_for(lambda: "ok" in outcomes)
        private_redis.stop()
        time.sleep(5)  # the outage itself, not a wait for a message
        private_redis.start()
        restarted = time.monotonic()

        def answers() -> bool:
            try:
                return bool(caller.send_request("echo", "back", timeout=0.5) == "back")
            except DaebusError:
                return False

        wait_for(answers, timeout=3.0, interval=0.05, message="no answer within 3 s of restart")
        recovered_after = time.monotonic() - restarted
        stop_traffic.set()
        thread.join(5)
        publisher = DaebusCaller("unused", redis_url=private_redis.url)
        try:
            wait_for(lambda: publisher.send_message(channel, {"beat": 1}) == 1, timeout=3)
        finally:
            publisher.close()
        wait_for(lambda: heard, message="the listener does not receive after the restart")
        assert heard[-1] == {"beat": 1}
        assert recovered_after < 3.0
        assert outcomes.count("ok") >= 2
    finally:
        stop_traffic.set()


@pytest.mark.slow
def test_a_server_that_stays_down_is_reported_by_the_transport_not_every_heartbeat(
    private_redis: Any, private_apps: Apps, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    # Heartbeats every 0.2 s: a 4 s outage spans 20 of them, each a failed renewal and a
    # failed registry write; and a line of each kind may go out every 0.5 s.
    monkeypatch.setattr(instances_module, "RENEW_EVERY", 0.2)
    monkeypatch.setattr(LogThrottle.__init__, "__defaults__", (0.5,))
    app = Daebus("outage")

    @app.action("echo")
    def echo() -> Any:
        return request.payload

    @app.listen(unique_name("events"), durable=True)
    async def on_event(data: Any) -> None:
        pass

    service = private_apps.start(app)
    caller = private_apps.caller(service, timeout=1)
    assert caller.send_request("echo", 1) == 1
    caplog.set_level(logging.DEBUG, logger="daebus")
    caplog.clear()
    private_redis.stop()
    time.sleep(4)  # the outage itself, not a wait for a message
    private_redis.start()
    wait_for(lambda: "reconnected" in caplog.text, timeout=5, message="no reconnect logged")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("lost the subscriber connection" in line for line in warnings), warnings
    said_by_the_transport = ("lost the subscriber", "still cannot reach", "reconnected to")
    # The server kept nothing: the groups are made again, and that is worth saying once.
    gone = [line for line in warnings if "is gone (deleted" in line]
    assert 1 <= len(gone) <= 2, warnings
    others = [
        line
        for line in warnings
        if line not in gone and not any(said in line for said in said_by_the_transport)
    ]
    # A renewal, a registry write and a read under way as the server went may each fail
    # before the subscriber connection is known to be lost; nothing repeats after that.
    assert len(others) <= 3, others
    # Still said, at debug, for whoever looks.
    assert any("could not renew" in r.getMessage() for r in caplog.records)


def test_a_caller_alone_after_a_restart_gets_its_reply_at_the_first_try(
    private_redis: Any, private_apps: Apps, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A thread calling alone reads its reply from the caller's own connection: one the
    # restart closed must be replaced before the request goes out, or the reply is lost.
    monkeypatch.setattr(_resp_blocking, "_CHECK_AFTER_IDLE", 0.0)  # the same for the publisher
    app = Daebus("restarted")
    app.add_action("echo", lambda: request.payload)
    service = private_apps.start(app)
    caller = private_apps.caller(service, timeout=5)
    assert caller.send_request("echo", 1) == 1
    assert caller.send_request("echo", 2) == 2  # the caller's own connection from now on
    private_redis.restart()
    client = redis.Redis.from_url(private_redis.url)
    channel = protocol.service_channel(service)
    wait_for(lambda: client.pubsub_numsub(channel)[0][1] == 1)  # the service is back
    client.close()
    assert caller.send_request("echo", 3) == 3


def test_a_caller_waiting_alone_when_the_server_goes_away_fails_at_once(
    private_redis: Any, private_apps: Apps
) -> None:
    app = Daebus("abandoned")
    release = threading.Event()

    @app.action("wait")
    def wait() -> str:
        release.wait(10)
        return "too late"

    app.add_action("ping", lambda: "pong")
    outcome: list[BaseException] = []
    try:
        caller = private_apps.caller(private_apps.start(app), timeout=60)
        assert caller.send_request("ping") == "pong"  # the caller's own connection from now on

        def call() -> None:
            try:
                caller.send_request("wait")
            except DaebusError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        wait_for(lambda: bool(caller.pending_requests))
        private_redis.stop()
        thread.join(10)  # well before the caller's 60 s timeout
        assert len(outcome) == 1
        assert isinstance(outcome[0], TransportError)
        assert ".wait" in str(outcome[0])
        assert "may have run" in str(outcome[0])
    finally:
        release.set()


def test_service_waits_for_redis_at_start(
    private_redis: Any, private_apps: Apps, logs: pytest.LogCaptureFixture
) -> None:
    private_redis.stop()
    app = Daebus("patient")
    app.add_action("ping", lambda: "pong")
    starter = threading.Thread(target=private_apps.start, args=(app, "patient-svc"), daemon=True)
    starter.start()
    wait_log(logs, "waiting for Redis")  # its first try failed: it is retrying now
    assert not app.is_running()
    private_redis.start()
    starter.join(10)
    assert app.is_running()
    wait_log(logs, "is reachable now")
    assert private_apps.caller("patient-svc").send_request("ping") == "pong"


# -- SIGTERM and SIGINT drain and exit 0 --------------------------------------------
SERVICE_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from daebus import Daebus, request

    marker = Path(sys.argv[2])
    app = Daebus("graceful")

    @app.action("slow")
    def slow():
        print("slow: started", flush=True)
        time.sleep(1.0)  # the work in flight when the signal comes
        return "finished"

    @app.thread("worker")
    def worker(running):
        stop = app.thread_tasks["worker"].stop_requested
        while running():
            stop.wait(1)  # returns as soon as the service stops
        marker.write_text("thread saw running() false")

    @app.on_stop
    def bye():
        with marker.open("a") as f:
            f.write("; on_stop ran")

    app.run(service=sys.argv[1])
    """
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_b12_signal_drains_in_flight_work_and_exits_0(
    redis_url: str, tmp_path: Path, sig: int
) -> None:
    service = unique_name("graceful")
    marker = tmp_path / "marker"
    script = tmp_path / "service.py"
    script.write_text(SERVICE_SCRIPT)
    with ServiceProcess(script, args=[service, str(marker)], redis_url=redis_url) as proc:
        proc.wait_ready(service)
        caller = DaebusCaller(service, redis_url=redis_url, timeout=10)
        result: list[Any] = []
        call = threading.Thread(target=lambda: result.append(caller.send_request("slow")))
        call.start()
        wait_for(lambda: "slow: started" in proc.stdout(), message=proc.output)
        assert proc.terminate(sig=sig, timeout=15) == 0
        call.join(10)
        caller.close()
        assert result == ["finished"], proc.output()
        assert marker.read_text() == "thread saw running() false; on_stop ran"
        assert "stopped" in proc.output()


DRAIN_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from daebus import Daebus, request

    app = Daebus("draining", max_workers=2, max_in_flight=2, max_queued=100)

    @app.action("slow")
    def slow():
        time.sleep(0.2)  # the work: both slots stay busy while the rest wait for one
        return request.payload

    app.run(service=sys.argv[1])
    """
)


def test_sigterm_answers_every_request_read_even_those_waiting_for_a_slot(
    redis_url: str, tmp_path: Path
) -> None:
    service = unique_name("draining")
    script = tmp_path / "service.py"
    script.write_text(DRAIN_SCRIPT)
    timeout = 8.0
    outcomes: list[tuple[str, float]] = []
    lock = threading.Lock()

    def call(caller: DaebusCaller, n: int) -> None:
        began = time.monotonic()
        try:
            assert caller.send_request("slow", n) == n
            outcome = "reply"
        except ServiceBusyError as exc:
            outcome = "busy" if "is stopping" in str(exc) else str(exc)
        except DaebusError as exc:
            outcome = type(exc).__name__
        with lock:
            outcomes.append((outcome, time.monotonic() - began))

    with ServiceProcess(script, args=[service], redis_url=redis_url) as proc:
        proc.wait_ready(service)
        with (
            DaebusCaller(service, redis_url=redis_url, timeout=timeout) as caller,
            Subscription(redis_url, service) as requests,
        ):
            caller.send_request("slow", -1)  # connected before the rush
            requests.get()
            threads = [threading.Thread(target=call, args=(caller, n)) for n in range(40)]
            for thread in threads:
                thread.start()
            for _ in threads:  # every request is on its way to the service
                requests.get()
            assert proc.terminate(timeout=20) == 0
            for thread in threads:
                thread.join(timeout + 5)
        output = proc.output()
    kinds = sorted(outcome for outcome, _ in outcomes)
    slowest = max(seconds for _, seconds in outcomes)
    print(f"outcomes: {kinds}; slowest {slowest:.2f}s")
    assert len(outcomes) == 40
    # No caller waits for its timeout: 2 run at a time, the rest are refused at once.
    assert set(kinds) <= {"reply", "busy"}, outcomes
    assert slowest < timeout / 2, outcomes
    assert kinds.count("busy") >= 1, outcomes
    refused = [line for line in output.splitlines() if "refused" in line]
    assert len(refused) == 1, output
    assert f"refused {kinds.count('busy')} request(s) unrun" in refused[0]


# -- stop_thread works ------------------------------------------------------------------
def test_b10_stop_thread_stops_the_thread(apps: Apps) -> None:
    app = Daebus("threads")
    loops = {"count": 0}
    running = "a user global the 0.0.31 stop_thread would clobber"

    @app.thread("worker")
    def worker(running: Any) -> None:
        stop = app.thread_tasks["worker"].stop_requested
        while running():
            loops["count"] += 1
            stop.wait(0.005)  # paces the loop; returns at once when stop_thread asks

    @app.thread("manual", auto_start=False)
    def manual() -> None:  # a thread without `running` polls app.is_running()
        stop = app.thread_tasks["manual"].stop_requested
        while app.is_running() and not stop.wait(0.005):
            pass

    apps.start(app)
    wait_for(lambda: loops["count"] > 2)
    assert app.stop_thread("worker", timeout=5) is True
    assert not app.threads["worker"].is_alive()
    assert running.startswith("a user global")
    assert app.start_thread("worker") is True
    assert app.start_thread("worker") is False  # already running
    assert app.start_thread("missing") is False
    assert app.start_thread("manual") is True
    assert app.stop_thread("manual") is True


# -- debug logs the message flow ------------------------------------------------------
def test_b11_debug_logs_message_flow(apps: Apps, caplog: pytest.LogCaptureFixture) -> None:
    app = Daebus("debugging")
    app.add_action("echo", lambda: request.payload)
    caplog.set_level(logging.DEBUG, logger="daebus.flow")
    service = apps.start(app, debug=True)
    assert apps.caller(service).send_request("echo", {"traced": True}) == {"traced": True}
    flow = [r.getMessage() for r in caplog.records if r.name == "daebus.flow"]
    assert any(m.startswith(f"-> {service} echo") and "traced" in m for m in flow), flow
    assert any(m.startswith(f"<- {service} success") for m in flow), flow
    logging.getLogger("daebus").setLevel(logging.NOTSET)


# -- background jobs -------------------------------------------------------------------
def test_b26_background_jobs_reschedule_and_duplicates_do_not_crash(apps: Apps) -> None:
    app = Daebus("jobs")
    runs: list[str] = []
    channel = unique_name("jobs")

    @app.background("cleanup", 3600)
    def first_cleanup() -> None:
        runs.append("first")

    @app.background("cleanup", 3600)  # same name: replaces, with a warning
    def cleanup() -> None:
        runs.append("cleanup")
        broadcast.send(channel, {"run": len(runs)})

    @app.background("async_job", 3600)
    async def async_job() -> None:
        await asyncio.sleep(0)
        runs.append("async")

    @app.background("failing", 0.05)
    def failing() -> None:
        raise RuntimeError("job failed, schedule keeps going")

    assert [task.name for task in app.background_tasks] == ["cleanup", "async_job", "failing"]
    name, interval, func = app.background_tasks["cleanup"]
    assert (name, interval, func) == ("cleanup", 3600, cleanup)
    with Subscription(apps.url, channel) as sub:
        apps.start(app)
        time.sleep(QUIET)  # an absence window: no job runs before its first interval
        assert runs == []
        app.background_tasks["cleanup"].interval = 0.05
        app.background_tasks["async_job"].interval = 0.05
        assert sub.get_json()["run"] >= 1
        wait_for(lambda: runs.count("cleanup") >= 3 and "async" in runs)
    assert "first" not in runs


# -- nothing configured at import ------------------------------------------------------
def test_b27_import_does_not_configure_logging() -> None:
    code = "import logging, daebus; r = logging.getLogger(); print(len(r.handlers), r.level)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", str(logging.WARNING)]


# -- bounded in-flight work -----------------------------------------------------------
@pytest.mark.parametrize("kind", ["async def", "def"])
def test_b28_in_flight_messages_are_bounded(apps: Apps, kind: str) -> None:
    app = Daebus("bounded", max_in_flight=3)
    entered: list[int] = []
    gate = threading.Event()

    if kind == "def":  # runs in a worker as one job, not as a task on the loop

        @app.action("wait")
        def wait_sync() -> int:
            entered.append(request.payload)
            gate.wait(10)
            return int(request.payload)

    else:

        @app.action("wait")
        async def wait() -> int:
            entered.append(request.payload)
            await asyncio.get_running_loop().run_in_executor(None, gate.wait, 10)
            return int(request.payload)

    service = apps.start(app)
    caller = apps.caller(service, timeout=20)
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda n=n: results.append(caller.send_request("wait", n)))
        for n in range(10)
    ]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(entered) == 3)
    time.sleep(QUIET)  # an absence window: a fourth message would enter if the limit leaked
    assert len(entered) == 3
    runtime = app._runtime
    assert runtime is not None
    assert runtime.active == 3
    assert runtime.busy == 3
    gate.set()
    for thread in threads:
        thread.join(20)
    assert sorted(results) == list(range(10))
    wait_for(lambda: runtime.busy == 0)
    assert runtime.active == 0


# -- callers are reusable after close -----------------------------------------------------
def test_b29_caller_reconnects_after_close_even_inside_a_handler(apps: Apps) -> None:
    backend = Daebus("backend")
    backend.add_action("get", lambda: {"value": request.payload})
    backend_service = apps.start(backend)
    module_level = DaebusCaller(backend_service)  # no URL: uses the running app's server

    front = Daebus("front")

    @front.action("proxy")
    def proxy() -> None:
        try:
            response.send(module_level.send_request("get", request.payload))
        finally:
            module_level.close()  # the messaging guide does this

    caller = apps.caller(apps.start(front))
    assert caller.send_request("proxy", 1) == {"value": 1}
    assert caller.send_request("proxy", 2) == {"value": 2}
    with DaebusCaller(backend_service, redis_url=apps.url) as scoped:
        assert scoped.send_request("get", 3) == {"value": 3}
    assert scoped.send_request("get", 4) == {"value": 4}  # reconnects after the with block
    scoped.close()


def test_close_from_one_thread_does_not_cut_off_another_threads_request(apps: Apps) -> None:
    # A module-level caller shared by threads: one thread closes it (as the messaging
    # guide does after each use) while another thread's request is still in flight.
    gate = threading.Event()
    backend = Daebus("slow-backend")

    @backend.action("slow")
    def slow() -> str:
        gate.wait(10)
        return "done"

    shared = apps.caller(apps.start(backend), timeout=10)
    results: list[object] = []
    worker = threading.Thread(target=lambda: results.append(shared.send_request("slow")))
    worker.start()
    wait_for(lambda: bool(shared.pending_requests))
    shared.close()  # deferred: a request is in flight
    assert shared._core.connected
    gate.set()
    worker.join(10)
    assert results == ["done"]
    wait_for(lambda: not shared._core.connected)  # the last request out closed it
    gate.clear()
    gate.set()
    assert shared.send_request("slow") == "done"  # and it reconnects when used again
    shared.close()
    assert not shared._core.connected


async def test_aclose_waits_for_requests_in_flight_on_other_tasks(apps: Apps) -> None:
    backend = Daebus("slow-async-backend")

    @backend.action("slow")
    async def slow() -> str:
        return "done"

    name = apps.start(backend)
    caller = AsyncDaebusCaller(name, redis_url=apps.url, timeout=10)
    # Hold a request open by streaming: the generator is in flight until exhausted.
    stream = caller.stream("slow")
    first = await stream.__anext__()
    assert first == "done"
    await caller.aclose()  # deferred
    assert caller.connected
    await stream.aclose()
    assert not caller.connected


def test_stop_cancels_async_handlers_still_waiting_after_the_timeout(apps: Apps) -> None:
    # Async handlers start eagerly and continue as tasks once they wait: those tasks
    # are drained, then cancelled, like any other.
    app = Daebus("stuck", shutdown_timeout=0.2)
    entered = threading.Event()
    unwound: list[str] = []

    @app.action("stuck")
    async def stuck() -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            unwound.append(request.payload)  # its own context, even when cancelled
            raise

    caller = apps.caller(apps.start(app))
    caller.send_to_service("one", action="stuck")
    assert entered.wait(10)
    app.stop()
    assert unwound == ["one"]
    assert not app.is_running()


def test_start_twice_and_stop_idempotent(apps: Apps) -> None:
    app = Daebus("once")
    service = apps.start(app)
    with pytest.raises(DaebusError, match="already running"):
        app.start(service, redis_url=apps.url)
    app.stop()
    app.stop()
    assert not app.is_running()


async def test_a_second_serve_is_refused_even_while_the_first_is_connecting(
    redis_url: str,
) -> None:
    app = Daebus("once")
    ready = asyncio.Event()
    first = asyncio.create_task(app.serve("once-a", redis_url=redis_url, on_ready=ready.set))
    await asyncio.sleep(0)  # the first has begun, and awaits its connection
    with pytest.raises(SetupError, match="already running"):
        await app.serve("once-b", redis_url=redis_url)
    await asyncio.wait_for(ready.wait(), 10)
    assert app.service == "once-a"
    app.stop()
    await asyncio.wait_for(first, 10)
    assert not app.is_running()
