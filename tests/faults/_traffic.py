"""Traffic for the fault suite: callers of every kind and a broadcaster, all recorded.

While a fault is injected, `Traffic` keeps calling the service from a blocking
`DaebusCaller` used by one thread, a `DaebusCaller` shared by several threads and an
`AsyncDaebusCaller` (two tasks on its own event loop), each call with a short timeout, and
broadcasts a sequence number to the service's listener every 10 ms with
``PubSubBroadcast().send`` (code outside any app, so ``$DAEBUS_REDIS_URL`` names the
server). Every call and every publish is recorded with its start, its end and its
outcome; `Verdict` turns the records and the fault's timeline into the list of broken
promises and a summary for the failure report.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from daebus import AsyncDaebusCaller, DaebusCaller
from daebus.exceptions import (
    CallTimeoutError,
    RemoteError,
    ServiceUnavailableError,
    TransportError,
)
from daebus.pubsub import PubSubBroadcast
from daebus.runtime.loop import run as run_on_daebus_loop

#: What a caller may raise when the server misbehaves: TransportError (and its
#: ConnectionLostError), CallTimeoutError (and ServiceUnavailableError), RemoteError (and
#: ServiceBusyError). Anything else, AssertionError above all, is a bug.
DOCUMENTED = (TransportError, CallTimeoutError, RemoteError)

#: How far past its timeout a call may end, for the scheduling of a loaded machine.
OVERRUN_ALLOWED = 1.0
#: How soon after the server is back the service must answer again, and go on answering.
RECOVERY_ALLOWED = 3.0
#: A broadcast counted by the server this close to the fault may still have been on its
#: way when the connection dropped: neither side stayed connected until its delivery.
IN_FLIGHT_MARGIN = 1.0
#: The service's log stamps times to the millisecond, cut (not rounded).
LOG_STAMP_GRAIN = 0.001

#: Pause between two calls of one thread or task, and between two broadcasts.
CALL_PACE = 0.025
BROADCAST_PACE = 0.01

ACTIONS = ("echo", "aecho")  # a plain def action and an async def one
KINDS = frozenset({"sync-1", "sync-shared", "async"})


class WrongReplyError(Exception):
    """The reply was not the payload sent: crossed or corrupted (never acceptable)."""


@dataclass(frozen=True)
class Call:
    """One call as a caller saw it."""

    kind: str
    action: str
    start: float
    end: float
    error: BaseException | None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Publish:
    """One broadcast: its sequence number, when it was sent, and the receiver count."""

    seq: int
    start: float
    end: float
    count: int | None
    error: BaseException | None


@dataclass
class Timeline:
    """When the fault began and when the server was back (monotonic seconds)."""

    begin: float = field(default_factory=time.monotonic)
    begin_wall: float = field(default_factory=time.time)
    fault: float = 0.0
    back: float = 0.0

    def at(self, moment: float) -> str:
        return f"+{moment - self.begin:.2f} s"

    def from_wall(self, wall: float) -> float:
        """A `time.time()` value (such as a log stamp) on the monotonic clock."""
        return self.begin + (wall - self.begin_wall)


class Traffic:
    """Calls and broadcasts in background threads until `stop()`."""

    def __init__(
        self,
        service: str,
        url: str,
        channel: str,
        *,
        timeout: float,
        shared_threads: int = 3,
        async_tasks: int = 2,
    ) -> None:
        self.service = service
        self.url = url
        self.channel = channel
        self.timeout = timeout
        self.calls: list[Call] = []
        self.publishes: list[Publish] = []
        #: Calls started and not finished, by thread or task: (kind, action, start).
        self.in_progress: dict[int, tuple[str, str, float]] = {}
        self._stop = threading.Event()
        self._nonce = itertools.count()
        self._single = DaebusCaller(service, redis_url=url, timeout=timeout)
        self._shared = DaebusCaller(service, redis_url=url, timeout=timeout)
        self._threads = [
            self._thread("sync-1", self._sync_calls, "sync-1", self._single, 0),
            *(
                self._thread(
                    f"sync-shared-{i}", self._sync_calls, "sync-shared", self._shared, i + 1
                )
                for i in range(shared_threads)
            ),
            self._thread("async", self._async_calls, async_tasks),
            self._thread("broadcast", self._broadcasts),
        ]

    @staticmethod
    def _thread(name: str, target: Callable[..., None], *args: Any) -> threading.Thread:
        # Daemon: a call stuck past every deadline must not keep pytest from exiting.
        return threading.Thread(target=target, args=args, name=f"traffic-{name}", daemon=True)

    def start(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float) -> list[str]:
        """Stop, waiting up to `timeout` s for every thread; the names of those still stuck."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [thread.name for thread in self._threads if thread.is_alive()]
        if not stuck:
            self._single.close()
            self._shared.close()
        return stuck

    def ok_kinds(self) -> set[str]:
        """The caller kinds that had an answer."""
        return {call.kind for call in self.calls if call.ok}

    def waiting_kinds(self, for_at_least: float) -> set[str]:
        """The caller kinds with a call that has waited `for_at_least` s and goes on."""
        since = time.monotonic() - for_at_least
        return {kind for kind, _, start in list(self.in_progress.values()) if start <= since}

    # -- the workers -----------------------------------------------------------------------

    def _payload(self) -> dict[str, int]:
        return {"n": next(self._nonce)}

    def _sync_calls(self, kind: str, caller: DaebusCaller, index: int) -> None:
        key = threading.get_ident()
        for action in _actions(index):
            if self._stop.is_set():
                return
            payload = self._payload()
            start = time.monotonic()
            self.in_progress[key] = (kind, action, start)
            error: BaseException | None = None
            try:
                if caller.send_request(action, payload, timeout=self.timeout) != payload:
                    error = WrongReplyError(f"{action} answered something else than {payload}")
            except Exception as exc:
                error = exc
            self.calls.append(Call(kind, action, start, time.monotonic(), error))
            del self.in_progress[key]
            self._stop.wait(CALL_PACE)

    def _async_calls(self, tasks: int) -> None:
        run_on_daebus_loop(self._async_main(tasks))

    async def _async_main(self, tasks: int) -> None:
        caller = AsyncDaebusCaller(self.service, redis_url=self.url, timeout=self.timeout)
        try:
            await asyncio.gather(*(self._async_task(caller, i) for i in range(tasks)))
        finally:
            await caller.aclose()

    async def _async_task(self, caller: AsyncDaebusCaller, index: int) -> None:
        key = -1 - index  # apart from the thread idents
        for action in _actions(index):
            if self._stop.is_set():
                return
            payload = self._payload()
            start = time.monotonic()
            self.in_progress[key] = ("async", action, start)
            error: BaseException | None = None
            try:
                reply = await caller.send_request(action, payload, timeout=self.timeout)
                if reply != payload:
                    error = WrongReplyError(f"{action} answered something else than {payload}")
            except Exception as exc:
                error = exc
            self.calls.append(Call("async", action, start, time.monotonic(), error))
            del self.in_progress[key]
            await asyncio.sleep(CALL_PACE)

    def _broadcasts(self) -> None:
        broadcast = PubSubBroadcast()
        for seq in itertools.count():
            if self._stop.is_set():
                return
            start = time.monotonic()
            count: int | None = None
            error: BaseException | None = None
            try:
                count = int(broadcast.send(self.channel, {"seq": seq}))
            except Exception as exc:
                error = exc
            self.publishes.append(Publish(seq, start, time.monotonic(), count, error))
            self._stop.wait(BROADCAST_PACE)


def _actions(index: int) -> Iterator[str]:
    """The actions one thread or task calls, in turn; neighbours start on different ones.

    So that at any moment some calls wait in the worker pool and others on the event loop.
    """
    return itertools.cycle(ACTIONS[index % 2 :] + ACTIONS[: index % 2])


def received(record: Path) -> set[int]:
    """The sequence numbers the service's listener wrote to `record`."""
    try:
        text = record.read_text()
    except FileNotFoundError:
        return set()
    # The last line may be half written; a number is only taken with its newline.
    return {int(line) for line in text.splitlines(keepends=True) if line.endswith("\n")}


#: A line of the service's log: "<date> <time> LEVEL logger: message".
_LOG_LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) (?P<logger>\S+): (?P<message>.*)$")


def log_messages(log: str, first_word: str) -> list[str]:
    """The lines of `log` whose message begins with `first_word` ("lost", "reconnected")."""
    lines = []
    for line in log.splitlines():
        match = _LOG_LINE.match(line)
        if match and match["message"].lower().startswith(first_word):
            lines.append(line)
    return lines


@dataclass
class Verdict:
    """The suite's promises, checked against one run's records."""

    scenario: str
    traffic: Traffic
    timeline: Timeline
    received: set[int]
    service_log: str
    stuck: list[str]
    outages: int = 1
    #: Whether the fault closes every connection (a crash or a restart, not a hang).
    connections_drop: bool = True
    #: Passwords whose appearances in the service's log the summary counts.
    secrets: tuple[str, ...] = ()
    problems: list[str] = field(default_factory=list)

    def check(self) -> Verdict:
        self._check_calls()
        self._check_broadcasts()
        self._check_log()
        return self

    # -- calls -----------------------------------------------------------------------------

    def _check_calls(self) -> None:
        traffic, back = self.traffic, self.timeline.back
        limit = traffic.timeout + OVERRUN_ALLOWED
        for kind, calls in self._by_kind().items():
            long = [c for c in calls if c.duration > limit]
            if long:
                self.problems.append(
                    f"{kind}: {len(long)} call(s) outlived the {traffic.timeout:g} s timeout by "
                    f"more than {OVERRUN_ALLOWED:g} s (max {max(c.duration for c in long):.2f} s)"
                )
            odd = [c for c in calls if c.error is not None and not isinstance(c.error, DOCUMENTED)]
            if odd:
                self.problems.append(
                    f"{kind}: undocumented failures: "
                    f"{_counts(Counter(type(c.error).__name__ for c in odd))}; "
                    + "; ".join(self._describe(c) for c in odd[:3])
                )
            early = [c for c in calls if c.end < self.timeline.fault and not c.ok]
            if early:
                self.problems.append(
                    f"{kind}: {len(early)} call(s) failed before the fault: "
                    f"{_counts(Counter(type(c.error).__name__ for c in early))}"
                )
            waited = self._learned_at_timeout(calls)
            if waited:
                self.problems.append(
                    f"{kind}: {len(waited)} call(s) in flight when the server dropped every "
                    f"connection learned it only at their timeout: "
                    + "; ".join(self._describe(c) for c in waited[:3])
                )
            first = self._first_ok_after_back(calls)
            if first is None or first.end > back + RECOVERY_ALLOWED:
                seen = "none" if first is None else f"{first.end - back:.2f} s after"
                self.problems.append(
                    f"{kind}: no answer within {RECOVERY_ALLOWED:g} s of the server coming back "
                    f"(first answer to a call started after it: {seen})"
                )
            late = [c for c in calls if c.start >= back + RECOVERY_ALLOWED and not c.ok]
            if late:
                self.problems.append(
                    f"{kind}: {len(late)} call(s) started more than {RECOVERY_ALLOWED:g} s after "
                    f"the server came back failed: "
                    f"{_counts(Counter(type(c.error).__name__ for c in late))}; "
                    + "; ".join(self._describe(c) for c in late[:3])
                )
        for kind, action, start in list(traffic.in_progress.values()):
            self.problems.append(
                f"{kind}: a call of {action} started at {self.timeline.at(start)} never ended"
            )
        if self.stuck:
            self.problems.append(f"threads still stuck at the end: {', '.join(self.stuck)}")

    def _learned_at_timeout(self, calls: list[Call]) -> list[Call]:
        """Calls in flight at a fault that closed their connections, failed by timeout.

        The connection a call waits on is closed under it: the caller can know at once
        (ConnectionLostError) instead of waiting its whole timeout.
        """
        if not self.connections_drop:
            return []
        fault = self.timeline.fault
        return [
            c
            for c in calls
            if c.start < fault <= c.end
            and isinstance(c.error, CallTimeoutError)
            and not isinstance(c.error, ServiceUnavailableError)
        ]

    def _describe(self, call: Call) -> str:
        return (
            f"{call.action} at {self.timeline.at(call.start)}: "
            f"{type(call.error).__name__}: {call.error}"
        )

    def _first_ok_after_back(self, calls: list[Call]) -> Call | None:
        after = [c for c in calls if c.ok and c.start >= self.timeline.back]
        return min(after, key=lambda c: c.end, default=None)

    def _by_kind(self) -> dict[str, list[Call]]:
        kinds: dict[str, list[Call]] = {"sync-1": [], "sync-shared": [], "async": []}
        for call in self.traffic.calls:
            kinds[call.kind].append(call)
        return kinds

    # -- broadcasts ------------------------------------------------------------------------

    def checked_broadcasts(self) -> list[Publish]:
        """Broadcasts a receiver was counted for while neither side could be disconnected.

        Those published well before the fault, and those published once the service was
        subscribed again: after it logged its reconnection, or at the latest once it had
        had its time to recover. Anything between may have been counted by the server for
        a connection that was then dropped, and pub/sub keeps nothing for a reconnection.
        """
        before = self.timeline.fault - IN_FLIGHT_MARGIN
        after = self._after_recovery()
        return [
            p
            for p in self.traffic.publishes
            if p.count is not None and p.count >= 1 and (p.end <= before or p.start >= after)
        ]

    def _after_recovery(self) -> float:
        """From when on the service must be subscribed again (monotonic)."""
        after = self.timeline.back + RECOVERY_ALLOWED
        reconnected = self.reconnected_at()
        if reconnected is not None and reconnected > self.timeline.back:
            after = min(after, reconnected)
        return after

    def reconnected_at(self) -> float | None:
        """When the service last logged "reconnected ...", on the monotonic clock."""
        lines = log_messages(self.service_log, "reconnected")
        if not lines:
            return None
        stamp = datetime.strptime(lines[-1][:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        return self.timeline.from_wall(stamp) + LOG_STAMP_GRAIN

    def _check_broadcasts(self) -> None:
        publishes = self.traffic.publishes
        missing = sorted(p.seq for p in self.checked_broadcasts() if p.seq not in self.received)
        if missing:
            self.problems.append(
                f"broadcasts: {len(missing)} counted by the server while both sides were "
                f"connected never reached the listener (first: {missing[:10]})"
            )
        after = self.timeline.back + RECOVERY_ALLOWED
        unheard = [p for p in publishes if p.start >= after and p.count == 0]
        if unheard:
            self.problems.append(
                f"broadcasts: {len(unheard)} published more than {RECOVERY_ALLOWED:g} s after the "
                f"server came back had no receiver (the listener is not subscribed again)"
            )
        odd = Counter(
            type(p.error).__name__
            for p in publishes
            if p.error is not None and not isinstance(p.error, DOCUMENTED)
        )
        if odd:
            self.problems.append(f"broadcasts: undocumented failures: {_counts(odd)}")

    # -- the service's log -----------------------------------------------------------------

    def _check_log(self) -> None:
        lost = log_messages(self.service_log, "lost")
        back = log_messages(self.service_log, "reconnected")
        if len(lost) != self.outages or len(back) != self.outages:
            self.problems.append(
                f"service log: {len(lost)} 'lost ...' and {len(back)} 'reconnected ...' "
                f"line(s) for {self.outages} outage(s)"
            )
        if "Traceback" in self.service_log:
            self.problems.append(f"service log: {self.service_log.count('Traceback')} traceback(s)")

    # -- the report ------------------------------------------------------------------------

    def summary(self, log_tail: int = 25) -> str:
        timeline, traffic = self.timeline, self.traffic
        lines = [
            f"scenario {self.scenario}: fault at {timeline.at(timeline.fault)}, server back "
            f"at {timeline.at(timeline.back)} ({timeline.back - timeline.fault:.2f} s later); "
            f"call timeout {traffic.timeout:g} s",
            f"{'caller':<12} {'calls':>6} {'ok':>6} {'max call':>9} {'answers again':>14} "
            f"{'waited out':>10}  failures by type",
        ]
        for kind, calls in self._by_kind().items():
            failures = Counter(type(c.error).__name__ for c in calls if c.error is not None)
            longest = max((c.duration for c in calls), default=0.0)
            first = self._first_ok_after_back(calls)
            again = "never" if first is None else f"{first.end - timeline.back:+.2f} s"
            waited = len(self._learned_at_timeout(calls)) if self.connections_drop else "-"
            lines.append(
                f"{kind:<12} {len(calls):>6} {sum(c.ok for c in calls):>6} "
                f"{longest:>7.2f} s {again:>14} {waited:>10}  {_counts(failures) or '-'}"
            )
        publishes = traffic.publishes
        counted = [p for p in publishes if p.count is not None and p.count >= 1]
        checked = self.checked_broadcasts()
        raised = Counter(type(p.error).__name__ for p in publishes if p.error is not None)
        in_flight = []
        for kind, calls in self._by_kind().items():
            caught = [c for c in calls if c.start < timeline.fault <= c.end]
            outcomes = Counter("ok" if c.ok else type(c.error).__name__ for c in caught)
            slowest = max((c.end - timeline.fault for c in caught), default=0.0)
            if caught:
                in_flight.append(f"{kind} {_counts(outcomes)} (ended by +{slowest:.2f} s)")
        lines.append(f"calls in flight at the fault: {'; '.join(in_flight) or 'none'}")
        window = self._after_recovery()
        lines += [
            "(answers again: the first answer to a call started after the server was back; "
            "waited out: calls in flight at the fault that failed only at their timeout)",
            f"broadcasts: published {len(publishes)} (receiver counted {len(counted)}, "
            f"no receiver {sum(p.count == 0 for p in publishes)}, raised "
            f"{_counts(raised) or 0}), received {len(self.received)}; longest publish "
            f"{max((p.end - p.start for p in publishes), default=0.0):.2f} s",
            f"  checked (published before {timeline.at(timeline.fault - IN_FLIGHT_MARGIN)} or "
            f"from {timeline.at(window)} on): "
            f"{sum(p.seq in self.received for p in checked)}/{len(checked)} received; "
            f"counted but not received over the whole run: "
            f"{sum(p.seq not in self.received for p in counted)}",
        ]
        lost = log_messages(self.service_log, "lost")
        back = log_messages(self.service_log, "reconnected")
        log_lines = self.service_log.splitlines()
        lines.append(
            f"service log: {len(log_lines)} lines, {len(lost)} 'lost', {len(back)} "
            f"'reconnected', {self.service_log.count('Traceback')} traceback(s); last "
            f"{min(log_tail, len(log_lines))}:"
        )
        for secret in self.secrets:
            shown = sum(secret in line for line in log_lines)
            lines.append(f"service log: a password shown in {shown} line(s)")
        lines += [f"  | {line}" for line in log_lines[-log_tail:]]
        return "\n".join(lines)

    def report(self) -> str:
        problems = "\n".join(f"- {problem}" for problem in self.problems) or "- none"
        return f"{self.summary()}\nbroken promises:\n{problems}"


def _counts(counter: Counter[str] | Iterable[tuple[str, int]]) -> str:
    items = counter.most_common() if isinstance(counter, Counter) else list(counter)
    return ", ".join(f"{name} {n}" for name, n in items)
