"""Callers when the server fails: every call ends within its timeout, with a clear error.

A server stopped (SIGSTOP) answers nothing; one killed drops every connection. Either
way a caller must not wait past the timeout it was given, and one whose reply can no
longer come (its connection dropped) must learn it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from _apps import Apps
from _helpers import wait_for
from daebus import (
    AsyncDaebusCaller,
    CallTimeoutError,
    ConnectionLostError,
    Daebus,
    TransportError,
)
from daebus.transport import _resp, redis as redis_transport

# Past the timeout a call may take this much longer (thread hand-overs, a loaded machine).
SLACK = 1.0


@contextlib.contextmanager
def stopped(server: Any) -> Iterator[None]:
    """The server frozen (SIGSTOP): connections stay open, nothing is answered."""
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


@pytest.fixture
def quick_health_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Silence is taken for a lost connection after 1 s instead of 5 (checked every 0.2 s)."""
    monkeypatch.setattr(_resp, "SILENCE_TIMEOUT", 1.0)
    monkeypatch.setattr(_resp, "HEALTH_CHECK_INTERVAL", 0.2)


def slow_app(seconds: float, entered: list[str] | None = None) -> Daebus:
    """An app whose ``slow`` and ``aslow`` actions take `seconds` to answer.

    Each of them appends its name to `entered` as it starts: a call is then in flight.
    """
    entered = entered if entered is not None else []
    app = Daebus("slow")

    @app.action("echo")
    def echo() -> Any:
        from daebus import request

        return request.payload

    @app.action("slow")
    def slow() -> Any:
        entered.append("slow")
        time.sleep(seconds)
        return {"slept": seconds}

    @app.action("aslow")
    async def aslow() -> Any:
        entered.append("aslow")
        await asyncio.sleep(seconds)
        return {"slept": seconds}

    return app


def timed(call: Callable[[], Any]) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        call()
    except Exception as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


def ended(call: Callable[[], Any]) -> tuple[float, BaseException | None]:
    """When ``call`` ended (monotonic clock), and what it raised."""
    try:
        call()
    except Exception as exc:
        return time.monotonic(), exc
    return time.monotonic(), None


# -- a stopped server: the caller's timeout bounds the call ----------------------------


@pytest.mark.parametrize("kind", ["connected", "connected twice", "new", "async", "async new"])
def test_a_call_to_a_stopped_server_ends_within_its_timeout(
    private_apps: Apps, private_redis: Any, kind: str
) -> None:
    service = private_apps.start(slow_app(0))
    timeout = 1.0
    caller = private_apps.caller(service, timeout=timeout)
    calls = 2 if kind == "connected twice" else 1  # the second call reads on its own lane
    if kind in ("connected", "connected twice"):
        for _ in range(calls):
            assert caller.send_request("echo", {"n": 1}) == {"n": 1}

    async def call_async() -> tuple[float, BaseException | None]:
        async_caller = AsyncDaebusCaller(service, redis_url=private_redis.url, timeout=timeout)
        try:
            if kind == "async":
                assert await async_caller.send_request("echo", {"n": 1}) == {"n": 1}
            with stopped(private_redis):
                started = time.monotonic()
                try:
                    await async_caller.send_request("echo", {"n": 2})
                except Exception as exc:
                    return time.monotonic() - started, exc
                return time.monotonic() - started, None
        finally:
            await async_caller.aclose()

    if kind.startswith("async"):
        elapsed, error = asyncio.run(call_async())
    else:
        with stopped(private_redis):
            elapsed, error = timed(lambda: caller.send_request("echo", {"n": 2}))

    assert isinstance(error, TransportError | CallTimeoutError), repr(error)
    assert elapsed < timeout + SLACK, f"{kind}: {elapsed:.2f} s on a {timeout} s timeout"


def test_a_broadcast_to_a_stopped_server_ends_within_the_command_timeout(
    private_redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_transport, "COMMAND_TIMEOUT", 1.0)
    monkeypatch.setenv("DAEBUS_REDIS_URL", private_redis.url)
    from daebus.pubsub import PubSubBroadcast

    broadcast = PubSubBroadcast()
    broadcast.send("news", {"n": 1})  # connected, and the connection just used
    with stopped(private_redis):
        elapsed, error = timed(lambda: broadcast.send("news", {"n": 2}))
    assert isinstance(error, TransportError), repr(error)
    assert elapsed < 1.0 + SLACK


# -- a connection lost while a call waits: the caller learns it at once ------------------


@pytest.mark.parametrize("kind", ["first call", "second call", "shared by threads", "async"])
def test_a_call_whose_connection_drops_fails_at_once(
    private_apps: Apps, private_redis: Any, kind: str
) -> None:
    entered: list[str] = []
    service = private_apps.start(slow_app(3, entered))
    timeout = 10.0
    caller = private_apps.caller(service, timeout=timeout)
    if kind == "second call":
        caller.send_request("echo", {})

    outcomes: list[tuple[float, BaseException | None]] = []

    def call() -> None:
        if kind == "async":

            async def main() -> None:
                async with AsyncDaebusCaller(
                    service, redis_url=private_redis.url, timeout=timeout
                ) as async_caller:
                    await async_caller.send_request("aslow")

            outcomes.append(ended(lambda: asyncio.run(main())))
        else:
            outcomes.append(ended(lambda: caller.send_request("slow")))

    threads = [
        threading.Thread(target=call) for _ in range(2 if kind == "shared by threads" else 1)
    ]
    for thread in threads:
        thread.start()
    # The calls are in flight once their handlers have started (they sleep 3 s).
    wait_for(lambda: len(entered) == len(threads), message=f"handlers started: {entered}")
    killed = time.monotonic()
    private_redis.kill()
    for thread in threads:
        thread.join(timeout + 5)
    assert len(outcomes) == len(threads)
    for ended_at, error in outcomes:
        assert isinstance(error, ConnectionLostError), repr(error)
        assert "may have run" in str(error)
        # At once: well before the handler would have answered (3 s), let alone the timeout.
        assert ended_at - killed < 2.0, (
            f"{kind}: learnt it {ended_at - killed:.2f} s after the kill"
        )


def test_a_hung_server_is_noticed_by_the_service_and_by_waiting_callers(
    quick_health_checks: None,
    private_apps: Apps,
    private_redis: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    entered: list[str] = []
    service = private_apps.start(slow_app(3, entered))
    caller = private_apps.caller(service, timeout=20)
    caplog.set_level(logging.WARNING, logger="daebus.transport.redis")
    outcome: list[tuple[float, BaseException | None]] = []
    thread = threading.Thread(
        target=lambda: outcome.append(timed(lambda: caller.send_request("slow")))
    )
    thread.start()
    wait_for(lambda: entered, message="the call did not reach its handler")

    def lost() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "lost the subscriber connection" in r.getMessage()]

    with stopped(private_redis):
        thread.join(15)
        wait_for(
            lost, timeout=10, interval=0.05, message="the service did not notice the hung server"
        )
    elapsed, error = outcome[0]
    assert isinstance(error, ConnectionLostError), repr(error)
    assert elapsed < 1.0 + 0.2 + 3.0, f"noticed after {elapsed:.2f} s"  # far from the 20 s
    assert "no answer" in lost()[0].getMessage()

    # Back: the service answers again.
    errors: list[Exception] = []

    def echoed() -> Any:
        try:
            return caller.send_request("echo", {"back": True}, timeout=1)
        except (TransportError, CallTimeoutError) as exc:
            errors.append(exc)
            return None

    reply = wait_for(
        echoed, timeout=10, interval=0.1, message=f"no answer after the server came back: {errors}"
    )
    assert reply == {"back": True}


def test_a_caller_reading_its_own_lane_notices_a_hung_server(
    quick_health_checks: None, private_apps: Apps, private_redis: Any
) -> None:
    # From its second call on, a thread calling alone reads its reply on a connection of
    # the caller's own: that one asks the server too while it waits.
    entered: list[str] = []
    service = private_apps.start(slow_app(3, entered))
    caller = private_apps.caller(service, timeout=20)
    assert caller.send_request("echo", {"n": 1}) == {"n": 1}  # the lane exists from now on
    outcome: list[tuple[float, BaseException | None]] = []
    thread = threading.Thread(
        target=lambda: outcome.append(timed(lambda: caller.send_request("slow")))
    )
    thread.start()
    wait_for(lambda: entered, message="the call did not reach its handler")
    with stopped(private_redis):
        thread.join(15)
    elapsed, error = outcome[0]
    assert isinstance(error, ConnectionLostError), repr(error)
    assert elapsed < 1.0 + 0.2 + 3.0, f"noticed after {elapsed:.2f} s"  # far from the 20 s
