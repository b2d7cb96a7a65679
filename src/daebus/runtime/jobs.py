"""Background jobs (``@background``), their schedules, and thread tasks (``@thread``).

A job runs every ``interval`` seconds, the first time one interval after start, never
overlapping itself; a late run is not made up for. Setting ``task.interval`` reschedules
it at once. :class:`Schedules` runs them while a service runs, each in its own task on
the loop, cancelled at shutdown. A thread task runs in its own daemon thread and gets a
``running`` callable that turns false when the service stops or
:meth:`Daebus.stop_thread` asks it to.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .. import context
from .._compat import timeout as deadline
from ..exceptions import SetupError
from .invoke import Invoker, accepts_arguments

if TYPE_CHECKING:
    from ..app import Daebus
    from .workers import WorkerPool

__all__ = ["BackgroundTask", "BackgroundTasks", "Schedules", "ThreadTask"]

# The name the runtime has always logged under: users filter on it.
logger = logging.getLogger("daebus.runtime")


class BackgroundTask:
    """One ``@background`` job. Unpacks as 0.0.31's ``(name, interval, func)`` tuple."""

    def __init__(self, name: str, interval: float, func: Callable[..., Any]) -> None:
        self.name = name
        self.func = func
        self._interval = _check_interval(name, interval)
        #: Called when the interval changes, so a running schedule wakes up. Internal.
        self.on_change: Callable[[], None] | None = None

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
        return f"<BackgroundTask {self.name!r} every {self._interval}s>"


def _check_interval(name: str, interval: float) -> float:
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
        raise SetupError(f"background task {name!r}: interval must be a positive number")
    return float(interval)


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


class Schedules:
    """The running schedules of a service's background jobs, one task each."""

    def __init__(self, app: Daebus, invoker: Invoker, pool: WorkerPool) -> None:
        self.app = app
        self.loop = invoker.loop
        self._invoker = invoker
        self._pool = pool
        #: Job name -> the task running its schedule.
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def schedule(self, task: BackgroundTask) -> None:
        """Start (or restart) the schedule of a background job."""
        old = self.tasks.pop(task.name, None)
        if old is not None:
            old.cancel()
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
                await self._run_job(task)
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
