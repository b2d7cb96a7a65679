"""A real service and its callers while the Redis server crashes, hangs or changes password.

Each test starts its own server and the service `fault_service.py` on it, runs calls of
every caller kind and a stream of broadcasts (`_traffic.Traffic`), injects one fault, and
checks what daebus promises through it (`_traffic.Verdict`):

- no call outlives its timeout by more than a second;
- every failure is a documented exception (TransportError, ConnectionLostError,
  CallTimeoutError, ServiceUnavailableError, ServiceBusyError, RemoteError);
- within 3 s of the server coming back the service answers every caller again, keeps
  answering, and its listener is subscribed again;
- no broadcast the server counted a receiver for is lost while both sides stay connected
  (before the fault, and after the recovery);
- the service's log says "lost ..." once and "reconnected ..." once per outage, and
  holds no traceback.

On failure the report shows, per caller kind, the calls, answers, failures by type and
the longest call, then the broadcasts and the tail of the service's log.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from _servers import RedisServer
from faults._rig import Rig
from faults._traffic import Timeline, Verdict

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

OLD_PASSWORD = "old-secret"
NEW_PASSWORD = "new-secret"


def _judge(verdict: Verdict) -> None:
    report = verdict.report()
    print(report)
    assert not verdict.problems, report


@pytest.mark.parametrize(
    "down",
    [
        # Back before the service's worker connections have been idle long enough to be
        # checked before use: a reply written into a dead one must not be lost.
        pytest.param(0.2, id="0.2s"),
        pytest.param(0.5, id="0.5s"),
        # Long enough for every reconnection back-off to reach its longest step.
        pytest.param(5.0, id="5s"),
    ],
)
def test_redis_killed_and_restarted(fault_rig: Callable[..., Rig], down: float) -> None:
    def fault(server: RedisServer, timeline: Timeline) -> None:
        timeline.fault = time.monotonic()
        timeline.back = server.crash_for(down)

    _judge(fault_rig().run(f"SIGKILL, back after {down:g} s", fault))


def test_redis_stopped_for_eight_seconds(fault_rig: Callable[..., Rig]) -> None:
    # Longer than two call timeouts and the allowed overrun: the calls caught by the stop
    # time out, and those started during it must time out too, not wait for the server.
    # Longer too than the silence after which a connection takes its server as gone (a
    # shorter stall is a busy server, not an outage), so the service must notice it.
    def fault(server: RedisServer, timeline: Timeline) -> None:
        timeline.fault = time.monotonic()
        server.pause()
        time.sleep(8.0)  # the hang itself
        server.resume()
        timeline.back = time.monotonic()

    _judge(fault_rig().run("SIGSTOP for 8 s, then SIGCONT", fault, connections_drop=False))


def test_redis_restarted_with_another_password(fault_rig: Callable[..., Rig]) -> None:
    # The clients' URL keeps the old password: while the server wants the new one every
    # connection is refused (WRONGPASS), which callers must report as a TransportError.
    def fault(server: RedisServer, timeline: Timeline) -> None:
        timeline.fault = time.monotonic()
        server.restart_with_password(NEW_PASSWORD)
        time.sleep(3.0)  # the outage itself
        server.restart_with_password(OLD_PASSWORD)
        timeline.back = time.monotonic()

    rig = fault_rig(password=OLD_PASSWORD)
    _judge(rig.run("restarted with a new password for 3 s, then with the old one", fault))
