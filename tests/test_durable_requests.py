"""Durable requests: ``send_request(..., durable=True)`` through the service's stream.

On a real server and on the memory transport: a request waits while no instance
runs, is answered once, streams its parts, fails as a published one does, and is
dropped unrun once its caller has stopped waiting. The killed-instance test runs
subprocesses, on the server only.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import redis

from _apps import Apps
from _helpers import QUIET, ServiceProcess, unique_name, wait_for
from daebus import (
    AsyncDaebusCaller,
    CallTimeoutError,
    Daebus,
    DaebusCaller,
    RemoteError,
    request,
    response,
)
from daebus.protocol import request_stream_key, stream_key
from daebus.transport.memory import broker_for

pytestmark = pytest.mark.timeout(90)


def _adder(runs: list[Any] | None = None) -> Daebus:
    app = Daebus("adder")

    @app.action("add")
    def add() -> int:
        if runs is not None:
            runs.append((request.payload, request.message_id, request.delivery_count))
        return int(request.payload["a"]) + int(request.payload["b"])

    @app.action("count")
    async def count() -> Any:
        for n in range(3):
            response.send({"n": n}, final=False)
        return "done"

    @app.action("fail")
    def fail() -> None:
        raise ValueError("no such thing")

    return app


def test_a_durable_request_is_answered(where: Apps) -> None:
    runs: list[Any] = []
    service = where.start(_adder(runs))
    caller = where.caller(service)
    assert caller.send_request("add", {"a": 2, "b": 3}, durable=True) == 5
    assert caller.send_request("add", {"a": 1, "b": 1}, durable=True, timeout=3) == 2
    assert len(runs) == 2
    payload, message_id, deliveries = runs[0]
    assert payload == {"a": 2, "b": 3}
    assert message_id
    assert deliveries == 1


def _stream_length(url: str, stream: str) -> int:
    if url.startswith("memory://"):
        return len(broker_for(url).streams.entries(stream))
    client = redis.Redis.from_url(url)
    try:
        return int(client.xlen(stream))
    finally:
        client.close()


def test_answered_durable_requests_leave_the_stream(where: Apps) -> None:
    service = where.start(_adder())
    caller = where.caller(service)
    for n in range(5):
        assert caller.send_request("add", {"a": n, "b": 1}, durable=True) == n + 1
    with pytest.raises(RemoteError):
        caller.send_request("fail", {}, durable=True)
    # Deleted with the acknowledgement that follows each answer.
    wait_for(lambda: _stream_length(where.url, request_stream_key(service)) == 0, timeout=10)


def test_a_durable_request_waits_for_the_service(where: Apps) -> None:
    service = unique_name("later")
    caller = where.caller(service)
    answer: list[Any] = []
    thread = threading.Thread(
        target=lambda: answer.append(
            caller.send_request("add", {"a": 20, "b": 22}, durable=True, timeout=20)
        )
    )
    thread.start()
    time.sleep(1.0)  # sent, and no instance anywhere
    assert not answer
    where.start(_adder(), service)
    thread.join(25)
    assert answer == [42]


def test_a_durable_request_streams_and_fails_as_a_published_one(where: Apps) -> None:
    service = where.start(_adder())
    caller = where.caller(service)
    assert list(caller.stream("count", durable=True)) == [{"n": 0}, {"n": 1}, {"n": 2}, "done"]
    parts: list[Any] = []
    assert caller.send_request("count", durable=True, on_progress=parts.append) == "done"
    assert parts == [{"n": 0}, {"n": 1}, {"n": 2}]
    with pytest.raises(RemoteError, match="no such thing"):
        caller.send_request("fail", durable=True)
    with pytest.raises(RemoteError, match="Unknown action"):
        caller.send_request("nothing", durable=True)


def test_the_async_caller_sends_durable_requests(where: Apps) -> None:
    service = where.start(_adder())

    async def main() -> list[Any]:
        async with AsyncDaebusCaller(service, redis_url=where.url) as caller:
            total = await caller.send_request("add", {"a": 4, "b": 5}, durable=True)
            parts = [part async for part in caller.stream("count", durable=True)]
            return [total, parts]

    assert asyncio.run(main()) == [9, [{"n": 0}, {"n": 1}, {"n": 2}, "done"]]


def test_instances_share_durable_requests_each_runs_once(where: Apps) -> None:
    service = unique_name("adder")
    runs: list[Any] = []
    lock = threading.Lock()
    for _ in range(2):
        app = Daebus("adder")

        @app.action("add")
        def add() -> int:
            time.sleep(0.002)
            with lock:
                runs.append(request.payload["a"])
            return int(request.payload["a"])

        where.start(app, service)
    caller = where.caller(service)
    results: list[int] = []

    def call(start: int) -> None:
        for n in range(start, start + 50):
            results.append(caller.send_request("add", {"a": n}, durable=True, timeout=20))

    threads = [threading.Thread(target=call, args=(s,)) for s in (0, 50, 100, 150)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    time.sleep(QUIET)
    assert sorted(results) == list(range(200))
    assert sorted(runs) == list(range(200))


def test_a_request_past_its_deadline_is_dropped_unrun(where: Apps, caplog: Any) -> None:
    service = unique_name("slowpoke")
    runs: list[Any] = []
    caller = where.caller(service)
    with pytest.raises(CallTimeoutError, match="Durable request"):
        caller.send_request("add", {"a": 1, "b": 1}, durable=True, timeout=0.3)
    assert caller.send_request  # the caller is still usable below
    late = threading.Thread(
        target=lambda: caller.send_request("add", {"a": 2, "b": 2}, durable=True, ttl=30)
    )
    late.start()
    time.sleep(0.5)
    where.start(_adder(runs), service)
    late.join(30)
    wait_for(lambda: len(runs) == 1)
    time.sleep(QUIET)
    assert [payload for payload, _, _ in runs] == [{"a": 2, "b": 2}]
    assert "caller stopped waiting" in caplog.text


def test_ttl_needs_durable() -> None:
    with pytest.raises(ValueError, match="durable=True"):
        DaebusCaller("x", redis_url="memory://ttl").send_request("a", ttl=3)


def test_a_request_whose_instance_was_killed_is_run_by_another(
    redis_url: str, service_processes: Any
) -> None:
    """The instance running it is SIGKILLed mid-handler; another answers within the timeout."""
    service = unique_name("victim")
    marks = unique_name("marks")
    code = f"""
import os, time, redis
from daebus import Daebus, request
app = Daebus("victim")
client = redis.Redis.from_url({redis_url!r})

@app.action("work")
def work():
    client.rpush({marks!r}, f"{{os.getpid()}}:{{request.delivery_count}}")
    if request.delivery_count == 1:
        time.sleep(60)  # killed in here
    return os.getpid()

app.run({service!r}, redis_url={redis_url!r})
"""
    first: ServiceProcess = service_processes(code)
    second: ServiceProcess = service_processes(code)
    first.wait_ready(service)
    second.wait_ready(service, count=2)
    client = redis.Redis.from_url(redis_url)
    caller = DaebusCaller(service, redis_url=redis_url)
    result: list[Any] = []
    thread = threading.Thread(
        target=lambda: result.append(caller.send_request("work", durable=True, timeout=40))
    )
    thread.start()
    wait_for(lambda: client.llen(marks) == 1, timeout=10)
    runner_pid = int(client.lindex(marks, 0).split(b":")[0])
    victim = first if first.pid == runner_pid else second
    victim.kill()
    thread.join(45)
    caller.close()
    survivor = second if victim is first else first
    assert result == [survivor.pid]
    assert [m.split(b":")[1] for m in client.lrange(marks, 0, -1)] == [b"1", b"2"]
    # Answered, it leaves the stream.
    wait_for(lambda: client.xlen(request_stream_key(service)) == 0, timeout=10)
    client.close()


def test_a_stopped_instance_leaves_its_groups(apps: Apps, redis_url: str) -> None:
    """Counted as a member no more (health_stats counts the consumers of a group)."""
    channel = unique_name("jobs")
    app = _adder()
    app.add_listener(channel, print, durable=True)
    service = apps.start(app)
    caller = apps.caller(service)
    assert caller.send_request("add", {"a": 1, "b": 1}, durable=True) == 2
    client = redis.Redis.from_url(redis_url)
    requests, listened = request_stream_key(service), stream_key(channel)
    assert len(client.xinfo_consumers(requests, service)) == 1
    assert len(client.xinfo_consumers(listened, service)) == 1
    app.stop()
    assert client.xinfo_consumers(requests, service) == []
    assert client.xinfo_consumers(listened, service) == []
    client.close()
