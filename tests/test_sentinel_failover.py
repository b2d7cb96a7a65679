"""Sentinel fails the master over, mid-traffic: services and callers follow on their own.

Each test has a master, a replica and three sentinels of its own, kills the master
(SIGKILL, as a crash would), and waits for the sentinels to promote the replica. The
transport's reconnect loops ask the sentinels again and land on the new master: no
restart, no new caller.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from _apps import Apps
from _helpers import unique_name, wait_for
from _sentinel import SentinelSet
from daebus import Daebus, DaebusError, broadcast, request
from daebus.protocol import stream_key

pytestmark = pytest.mark.timeout(120)

#: The promise: the service answers again within this long of the promotion.
ANSWERS_AGAIN_WITHIN = 5.0
#: Each call's own timeout while the master is down.
CALL_TIMEOUT = 1.0
#: How long the sentinels may take to notice the death and promote the replica.
PROMOTION_TIMEOUT = 30.0


@dataclass(frozen=True)
class Call:
    started: float
    ended: float
    outcome: Any  # the reply, or the exception


def adder() -> Daebus:
    app = Daebus("adder")

    @app.action("add")
    def add() -> Any:
        return request.payload["a"] + request.payload["b"]

    return app


def call_steadily(apps: Apps, service: str, calls: list[Call], stop: threading.Event) -> None:
    caller = apps.caller(service)
    n = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            outcome: Any = caller.send_request("add", {"a": n, "b": 1}, timeout=CALL_TIMEOUT)
        except DaebusError as exc:
            outcome = exc
        calls.append(Call(started, time.monotonic(), outcome))
        n += 1
        if isinstance(outcome, Exception):
            stop.wait(0.05)  # not a busy loop against a dead master


def test_a_service_answers_again_soon_after_the_promotion(
    private_sentinels: SentinelSet, capsys: pytest.CaptureFixture[str]
) -> None:
    with Apps(private_sentinels.url) as apps:
        service = apps.start(adder())
        calls: list[Call] = []
        stop = threading.Event()
        callers = [
            threading.Thread(target=call_steadily, args=(apps, service, calls, stop))
            for _ in range(2)
        ]
        for thread in callers:
            thread.start()
        try:
            wait_for(lambda: len(calls) >= 20, message="no steady calls before the failover")
            old = private_sentinels.master_address()
            assert old is not None
            killed_at = time.monotonic()
            private_sentinels.master.kill()
            new, promoted_at = private_sentinels.wait_promoted(old, PROMOTION_TIMEOUT)

            def answered_after_the_kill() -> Call | None:
                return next(
                    (
                        call
                        for call in list(calls)
                        if call.started > killed_at and not isinstance(call.outcome, Exception)
                    ),
                    None,
                )

            first = wait_for(
                answered_after_the_kill,
                timeout=promoted_at - time.monotonic() + ANSWERS_AGAIN_WITHIN + 5,
                message=lambda: f"no answer after the failover; last: {calls[-3:]}",
            )
            wait_for(lambda: sum(call.started > first.ended for call in list(calls)) >= 10)
        finally:
            stop.set()
            for thread in callers:
                thread.join(timeout=10)
    after = first.ended - promoted_at
    with capsys.disabled():
        print(
            f"\nsentinel failover: promoted {promoted_at - killed_at:.2f} s after the kill "
            f"({old[1]} -> {new[1]}); first answer {after:+.2f} s after the promotion"
        )
    assert after < ANSWERS_AGAIN_WITHIN
    # Meanwhile every call ended within its timeout, with its reply or a daebus error.
    slow = [call for call in calls if call.ended - call.started > CALL_TIMEOUT + 1.0]
    assert not slow, slow
    failed = [call.outcome for call in calls if isinstance(call.outcome, Exception)]
    assert all(isinstance(error, DaebusError) for error in failed)
    # Once it answers again, it goes on answering.
    answered = [c for c in calls if c.started > first.ended]
    assert answered
    assert all(not isinstance(c.outcome, Exception) for c in answered), answered


def send_durably(url: str, channel: str, payload: Any) -> str:
    """A durable ``broadcast.send`` from a script, tried again while the master is away."""
    os.environ["DAEBUS_REDIS_URL"] = url
    try:
        return wait_for(
            lambda: _try_send(channel, payload),
            timeout=ANSWERS_AGAIN_WITHIN + 5,
            interval=0.1,
            message=f"could not send {payload} durably",
        )
    finally:
        del os.environ["DAEBUS_REDIS_URL"]


def _try_send(channel: str, payload: Any) -> str | None:
    try:
        return str(broadcast.send(channel, payload, durable=True))
    except DaebusError:
        return None


def test_a_durable_listener_keeps_consuming_after_the_failover(
    private_sentinels: SentinelSet, logs: pytest.LogCaptureFixture
) -> None:
    url = private_sentinels.url
    channel = unique_name("orders")
    seen: list[Any] = []
    app = Daebus("durable")

    @app.listen(channel, durable=True)
    def on_order(data: Any) -> None:
        seen.append(data["n"])

    with Apps(url) as apps:
        apps.start(app)
        send_durably(url, channel, {"n": 0})
        wait_for(lambda: seen == [0], message=lambda: f"seen {seen}")
        # The group and the entry reach the replica before the kill: what is promoted has them.
        wait_for(
            lambda: _replica_has(private_sentinels, channel),
            message="the replica did not catch up",
        )
        old = private_sentinels.master_address()
        assert old is not None
        private_sentinels.master.kill()
        new, _ = private_sentinels.wait_promoted(old, PROMOTION_TIMEOUT)
        for n in range(1, 4):
            send_durably(url, channel, {"n": n})
        wait_for(
            lambda: sorted(set(seen)) == [0, 1, 2, 3],
            timeout=ANSWERS_AGAIN_WITHIN + 10,
            message=lambda: f"seen {seen}",
        )
    assert any(
        f"now name 127.0.0.1:{new[1]} the master" in record.getMessage()
        and f"(was 127.0.0.1:{old[1]}): a failover" in record.getMessage()
        for record in logs.records
    ), [record.getMessage() for record in logs.records]


def _replica_has(sentinels: SentinelSet, channel: str) -> bool:
    """Whether the replica has the group of ``channel``'s stream."""
    replica = sentinels.replica
    assert replica is not None
    client = redis.Redis(host=replica.host, port=replica.port)
    try:
        return bool(client.xinfo_groups(stream_key(channel)))
    except redis.RedisError:
        return False
    finally:
        client.close()


def test_the_old_master_back_is_not_used(private_sentinels: SentinelSet) -> None:
    """Restarted after the failover, the old master claims to be a master (an empty one)
    until the sentinels make it a replica: nothing connects to it meanwhile."""
    url = private_sentinels.url
    with Apps(url) as apps:
        service = apps.start(adder())
        old = private_sentinels.master_address()
        assert old is not None
        private_sentinels.master.kill()
        private_sentinels.wait_promoted(old, PROMOTION_TIMEOUT)
        caller = apps.caller(service, timeout=CALL_TIMEOUT)
        wait_for(lambda: _answers(caller), timeout=ANSWERS_AGAIN_WITHIN + 5)
        private_sentinels.master.start()  # on its old port, without the data it had
        back = redis.Redis(host=old[0], port=old[1])

        def demoted() -> bool:
            # New callers, and the one there, use the promoted replica all along.
            assert apps.caller(service, timeout=5.0).send_request("add", {"a": 1, "b": 1}) == 2
            assert caller.send_request("add", {"a": 2, "b": 2}) == 4
            return bool(back.execute_command("ROLE")[0] == b"slave")

        try:
            wait_for(demoted, timeout=30.0, interval=0.2, message="the old master stayed one")
        finally:
            back.close()
        assert apps.caller(service).send_request("add", {"a": 3, "b": 3}) == 6


def _answers(caller: Any) -> bool:
    try:
        return bool(caller.send_request("add", {"a": 0, "b": 1}) == 1)
    except DaebusError:
        return False
