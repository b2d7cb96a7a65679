"""Background jobs (``@background``), their schedules, and thread tasks (``@thread``).

A job runs every ``interval`` seconds, the first time one interval after start, never
overlapping itself; a late run is not made up for. Setting ``task.interval`` reschedules
it at once. :class:`Schedules` runs them while a service runs, each in its own task on
the loop, cancelled at shutdown. A thread task runs in its own daemon thread and gets a
``running`` callable that turns false when the service stops or
:meth:`Daebus.stop_thread` asks it to.

Every instance of a service runs its jobs, unless a job is ``shared``: then only the
instance holding the job's :class:`Lease` runs it (a key in Redis,
:func:`daebus.protocol.lease_key`, whose value is the holder's instance id). The holder
renews it every third of the lease time, atomically and only while it is still its own;
each of the others tries to take it (``SET NX PX``) when a run falls due on its own
schedule. A holder that stops releases the lease, so another takes it at its next run;
a killed one's lease expires, and another takes it within a lease time and an interval.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .. import context, protocol
from .._compat import timeout as deadline
from ..exceptions import SetupError, TransportError
from .invoke import accepts_arguments

if TYPE_CHECKING:
    from ..transport import Transport
    from . import ServiceRuntime

__all__ = [
    "LEASE_FLOOR",
    "LEASE_INTERVALS",
    "BackgroundTask",
    "BackgroundTasks",
    "Lease",
    "Schedules",
    "ThreadTask",
]

# The name the runtime has always logged under: users filter on it.
logger = logging.getLogger("daebus.runtime")

#: A shared job's lease lasts this many intervals unless given ``lease=``...
LEASE_INTERVALS = 3
#: ...and never less than this many seconds, so that a short interval does not make
#: the holder renew it many times a second.
LEASE_FLOOR = 10.0


class BackgroundTask:
    """One ``@background`` job. Unpacks as 0.0.31's ``(name, interval, func)`` tuple.

    ``shared``: run on one instance of the service at a time, the one holding the lease
    (for ``lease`` seconds, :attr:`lease_time` by default).
    """

    def __init__(
        self,
        name: str,
        interval: float,
        func: Callable[..., Any],
        *,
        shared: bool = False,
        lease: float | None = None,
    ) -> None:
        self.name = name
        self.func = func
        self._interval = _check_interval(name, interval)
        self.shared = bool(shared)
        if lease is not None:
            lease = _check_seconds(name, "lease", lease)
            if not shared:
                raise SetupError(f"background task {name!r}: lease= is for shared=True jobs")
        #: The lease time given at registration, if any.
        self.lease = lease
        #: Called when the interval changes, so a running schedule wakes up. Internal.
        self.on_change: Callable[[], None] | None = None

    @property
    def lease_time(self) -> float:
        """Seconds a shared job's lease lasts unrenewed.

        ``lease`` if given, else ``max(LEASE_INTERVALS * interval, LEASE_FLOOR)``.
        """
        if self.lease is not None:
            return self.lease
        return max(LEASE_INTERVALS * self._interval, LEASE_FLOOR)

    @property
    def interval(self) -> float:
        """Seconds between runs; setting it reschedules the job at once."""
        return self._interval

    @interval.setter
    def interval(self, value: float) -> None:
        self._interval = _check_interval(self.name, value)
        if self.on_change is not None:
            self.on_change()

    def __iter__(self) -> Iterator[Any]:
        return iter((self.name, self._interval, self.func))

    def __repr__(self) -> str:
        shared = ", shared" if self.shared else ""
        return f"<BackgroundTask {self.name!r} every {self._interval}s{shared}>"


def _check_interval(name: str, interval: float) -> float:
    return _check_seconds(name, "interval", interval)


def _check_seconds(name: str, what: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise SetupError(f"background task {name!r}: {what} must be a positive number")
    return float(value)


class BackgroundTasks:
    """The registered jobs by name; iterates over the tasks like 0.0.31's list did."""

    def __init__(self) -> None:
        self._tasks: dict[str, BackgroundTask] = {}

    def add(self, task: BackgroundTask) -> BackgroundTask | None:
        """Add or replace a task; returns the replaced one."""
        old = self._tasks.get(task.name)
        self._tasks[task.name] = task
        return old

    def __getitem__(self, key: str | int) -> BackgroundTask:
        if isinstance(key, int):
            return list(self._tasks.values())[key]
        return self._tasks[key]

    def get(self, name: str) -> BackgroundTask | None:
        """The task called ``name``, or None."""
        return self._tasks.get(name)

    def __contains__(self, key: object) -> bool:
        return key in self._tasks or key in self._tasks.values()

    def __iter__(self) -> Iterator[BackgroundTask]:
        return iter(list(self._tasks.values()))

    def __len__(self) -> int:
        return len(self._tasks)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, BackgroundTasks):
            return self._tasks == other._tasks
        if isinstance(other, list):
            return [tuple(task) for task in self._tasks.values()] == [tuple(x) for x in other]
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def keys(self) -> list[str]:
        """The task names."""
        return list(self._tasks)

    def values(self) -> list[BackgroundTask]:
        """The tasks."""
        return list(self._tasks.values())

    def items(self) -> list[tuple[str, BackgroundTask]]:
        """``(name, task)`` pairs."""
        return list(self._tasks.items())

    def __repr__(self) -> str:
        return f"BackgroundTasks({list(self._tasks.values())!r})"


class ThreadTask:
    """One ``@thread`` task and the thread running it, if any."""

    def __init__(self, name: str, func: Callable[..., Any], auto_start: bool = True) -> None:
        self.name = name
        self.func = func
        self.auto_start = auto_start
        self.thread: threading.Thread | None = None
        self.stop_requested = threading.Event()
        # 0.0.31 passed ``running``; a function without parameters is called bare.
        self.takes_running = accepts_arguments(func, 1)

    def __getitem__(self, key: str) -> Any:
        # 0.0.31 stored {"func": ..., "auto_start": ...} dicts in thread_tasks.
        if key == "func":
            return self.func
        if key == "auto_start":
            return self.auto_start
        raise KeyError(key)

    def is_alive(self) -> bool:
        """True while the task's thread runs."""
        return self.thread is not None and self.thread.is_alive()

    def __repr__(self) -> str:
        state = "alive" if self.is_alive() else "stopped"
        return f"<ThreadTask {self.name!r} {state}>"


class Lease:
    """This instance's hold on the lease of one shared job: taken, renewed, released.

    Held, as far as this instance knows, until the lease time after its last renewal
    was sent: the server's expiry comes later still, so the holder stops running the
    job before another instance can take it over.
    """

    def __init__(self, runtime: ServiceRuntime, task: BackgroundTask) -> None:
        #: The job; replaced when the job is registered again under its name.
        self.task = task
        self.owner = runtime.instances.id
        self.loop = runtime.loop
        self.throttle = runtime.throttle
        self.transport: Transport = runtime.transport
        self.key = protocol.lease_key(runtime.service, task.name)
        self._until: float | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._unsupported = False

    @property
    def held(self) -> bool:
        """True while this instance holds the lease."""
        return self._until is not None and self.loop.time() < self._until

    async def take(self) -> bool:
        """Hold the lease, taking it if nobody does; True if this instance may run the job.

        Raises:
            TransportError: the server did not answer; the run is skipped.
        """
        if self._unsupported or self.held:
            return True
        ttl = self.task.lease_time
        sent = self.loop.time()
        try:
            won = await self.transport.claim(self.key, self.owner, round(ttl * 1000))
        except NotImplementedError:
            self._unsupported = True
            logger.warning(
                "background task %r is shared, but %s cannot hold a lease: every instance runs it",
                self.task.name,
                type(self.transport).__name__,
            )
            return True
        if not won:
            return False
        self._until = sent + ttl
        if self._renewer is None or self._renewer.done():
            self._renewer = self.loop.create_task(
                self._renew_forever(), name=f"daebus-lease {self.task.name}"
            )
        logger.info(
            "instance %s holds the lease of the shared background task %r (%.3gs): it runs it",
            self.owner,
            self.task.name,
            ttl,
        )
        return True

    async def _renew_forever(self) -> None:
        pause = self.task.lease_time / 3
        while True:
            await asyncio.sleep(pause)
            ttl = self.task.lease_time
            sent = self.loop.time()
            try:
                renewed = await self.transport.renew_claim(self.key, self.owner, round(ttl * 1000))
            except TransportError as exc:
                if not self.held:
                    self._lost("it could not be renewed in time")
                    return
                self.throttle.log(
                    logging.WARNING,
                    f"lease {self.task.name}",
                    "could not renew the lease of the shared background task %r: %s",
                    self.task.name,
                    exc,
                )
                # Sooner than usual: at a third of the lease time, one more try would be the last.
                pause = ttl / 10
                continue
            if not renewed:
                self._lost("another instance took it")
                return
            self._until = sent + ttl
            pause = ttl / 3

    def _lost(self, why: str) -> None:
        self._until = None
        logger.warning(
            "instance %s lost the lease of the shared background task %r (%s): it stops running it",
            self.owner,
            self.task.name,
            why,
        )

    def _stop_renewing(self) -> None:
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()

    async def release(self) -> None:
        """Give the lease up, so another instance takes it at once (idempotent)."""
        self._stop_renewing()
        if self._until is None:
            return
        self._until = None
        try:
            await self.transport.release_claim(self.key, self.owner)
        except TransportError as exc:  # it expires instead
            logger.debug("could not release the lease of %r: %s", self.task.name, exc)

    def abandon(self) -> None:
        """Stop renewing the lease and leave it to expire.

        For a stop that interrupts a run: a ``def`` job goes on in its thread, and no
        other instance may start the job before it ends or the lease runs out.
        """
        self._stop_renewing()
        self._until = None


class Schedules:
    """The running schedules of a service's background jobs, one task each."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime
        self.app = runtime.app
        self.loop = runtime.loop
        self._invoker = runtime.invoker
        self._pool = runtime.job_executor
        self.throttle = runtime.throttle
        #: Job name -> the task running its schedule.
        self.tasks: dict[str, asyncio.Task[None]] = {}
        #: Shared job name -> its lease; kept when the job is rescheduled.
        self.leases: dict[str, Lease] = {}

    def schedule(self, task: BackgroundTask) -> None:
        """Start (or restart) the schedule of a background job."""
        old = self.tasks.pop(task.name, None)
        if old is not None:
            old.cancel()
        lease = self.leases.get(task.name)
        if not task.shared:
            # The old schedule releases it as it ends: it no longer is in the table.
            self.leases.pop(task.name, None)
        elif lease is None:
            self.leases[task.name] = Lease(self.runtime, task)
        else:
            lease.task = task
        self.tasks[task.name] = self.loop.create_task(
            self._run_schedule(task), name=f"daebus-job {task.name}"
        )

    def cancel(self) -> None:
        """Stop every schedule (a run in progress is cancelled too)."""
        for schedule in self.tasks.values():
            schedule.cancel()

    async def _run_schedule(self, task: BackgroundTask) -> None:
        changed = asyncio.Event()
        loop = self.loop

        def interval_changed() -> None:
            loop.call_soon_threadsafe(changed.set)

        task.on_change = interval_changed
        lease = self.leases.get(task.name) if task.shared else None
        running = False
        last_start = loop.time()
        next_run = last_start + task.interval
        try:
            while True:
                delay = next_run - loop.time()
                if delay > 0:
                    changed.clear()
                    try:
                        async with deadline(delay):
                            await changed.wait()
                    except asyncio.TimeoutError:
                        pass
                    else:
                        next_run = last_start + task.interval
                        continue
                    continue
                last_start = loop.time()
                if lease is None or await self._may_run(lease):
                    running = True
                    await self._run_job(task)
                    running = False
                next_run += task.interval
                now = loop.time()
                if next_run <= now:
                    missed = int((now - next_run) // task.interval) + 1
                    next_run += missed * task.interval
                    logger.warning(
                        "background task %r overran its %ss interval; skipped %d run(s)",
                        task.name,
                        task.interval,
                        missed,
                    )
        finally:
            if task.on_change is interval_changed:
                task.on_change = None
            # Kept when the job was only rescheduled: its new schedule goes on with it.
            replaced = self.tasks.get(task.name) is not asyncio.current_task()
            if lease is not None and not (replaced and self.leases.get(task.name) is lease):
                if running:
                    lease.abandon()
                else:
                    await lease.release()

    async def _may_run(self, lease: Lease) -> bool:
        try:
            return await lease.take()
        except TransportError as exc:
            self.throttle.log(
                logging.WARNING,
                f"lease {lease.task.name}",
                "skipped a run of the shared background task %r: could not take its lease: %s",
                lease.task.name,
                exc,
            )
            return False

    async def _run_job(self, task: BackgroundTask) -> None:
        started = time.monotonic()
        try:
            await self._invoker.invoke(
                task.func, context.MessageContext(self.app), (), executor=self._pool
            )
        except Exception:
            logger.exception("background task %r failed", task.name)
        else:
            logger.debug("background task %r ran in %.3fs", task.name, time.monotonic() - started)
