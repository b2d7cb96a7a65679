"""The fault suite's rig: a private server, the fault service on it, and a run of traffic."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from _helpers import ServiceProcess, unique_name, wait_for
from _servers import RedisServer
from daebus import protocol
from faults._traffic import KINDS, RECOVERY_ALLOWED, Timeline, Traffic, Verdict, received

SERVICE_SCRIPT = Path(__file__).resolve().parent / "fault_service.py"

#: The timeout of every call: short, so that the calls made during an outage end in it.
CALL_TIMEOUT = 2.0
#: Traffic before the fault, once every caller has had an answer: the normal case.
BEFORE_FAULT = 1.5
#: Traffic after the recovery window, during which every call must be answered.
AFTER_RECOVERY = 2.5
#: How long the threads get to finish once told to stop (a call stuck past its timeout
#: is reported, not waited for).
STOP_GRACE = 30.0

Fault = Callable[[RedisServer, Timeline], None]


class Rig:
    """A private server with the fault service on it, and the traffic to run against it."""

    def __init__(self, server: RedisServer, workdir: Path) -> None:
        self.server = server
        self.url = server.url  # what every client holds, whatever the server does later
        self.service = unique_name("faults")
        self.channel = unique_name("faults-events")
        self.record = workdir / "received.txt"
        self.process = ServiceProcess(
            SERVICE_SCRIPT,
            args=(self.service, self.channel, str(self.record)),
            redis_url=self.url,
            log_dir=workdir,
            name="fault_service",
        )

    def start(self) -> None:
        self.process.start()
        self.process.wait_ready(protocol.service_channel(self.service))
        self.process.wait_ready(self.channel)

    def service_log(self) -> str:
        return self.process.stdout() + self.process.stderr()

    def run(
        self, scenario: str, fault: Fault, *, outages: int = 1, connections_drop: bool = True
    ) -> Verdict:
        """Run the traffic, inject `fault`, let the service recover, and judge the run.

        `fault` sets the timeline's ``fault`` and ``back``; `outages` is how many times the
        service loses the server, `connections_drop` whether the fault closes connections.
        """
        traffic = Traffic(self.service, self.url, self.channel, timeout=CALL_TIMEOUT)
        timeline = Timeline()
        traffic.start()
        stuck: list[str] = []
        try:
            wait_for(
                lambda: traffic.ok_kinds() == KINDS and bool(received(self.record)),
                timeout=15.0,
                interval=0.02,
                message=lambda: (
                    f"every caller answered and a broadcast heard\n{self.service_log()}"
                ),
            )
            _keep_running(BEFORE_FAULT)
            # Strike while a call of every kind waits for its reply (when that comes
            # soon enough), to see what a caller learns when a fault catches a call.
            with contextlib.suppress(AssertionError):
                wait_for(
                    lambda: traffic.waiting_kinds(for_at_least=0.02) == KINDS,
                    timeout=2.0,
                    interval=0.02,
                    message="a call of every kind is in flight",
                )
            fault(self.server, timeline)
            _keep_running(timeline.back + RECOVERY_ALLOWED + AFTER_RECOVERY - time.monotonic())
        finally:
            stuck = traffic.stop(STOP_GRACE)
        verdict = Verdict(
            scenario,
            traffic,
            timeline,
            received=set(),
            service_log=self.service_log(),
            stuck=stuck,
            outages=outages,
            connections_drop=connections_drop,
            secrets=(self.server.password,) if self.server.password else (),
        )
        # The listener writes what it got as it gets it; the last ones may still be on
        # their way, so wait for them a little (those never coming are the failure).
        expected = {p.seq for p in verdict.checked_broadcasts()}
        with contextlib.suppress(AssertionError):
            wait_for(
                lambda: expected <= received(self.record),
                timeout=5.0,
                interval=0.02,
                message="the listener got every checked broadcast",
            )
        verdict.received = received(self.record)
        verdict.service_log = self.service_log()
        return verdict.check()


def _keep_running(seconds: float) -> None:
    # The traffic runs meanwhile: this is the length of a phase, not a wait for an event.
    time.sleep(max(0.0, seconds))
