"""Admission and back-pressure: how many messages are handled at once, and what waits.

A message holds a slot while it is handled: as a task on the loop (``tasks``, counted
on the loop alone) or as a ``def`` action in a worker (started on the loop, finished by
the workers under a lock). At most ``max_in_flight`` slots are taken. With every slot
taken, messages wait in :attr:`Admission.requests` and :attr:`Admission.broadcasts`,
in the order they came, and start as slots free up; past ``max_queued`` requests, or
``max_queued_bytes`` of requests and broadcasts in all, a request is refused and a
broadcast dropped (by :mod:`~daebus.runtime.requests` and
:mod:`~daebus.runtime.broadcasts`). The service never stops reading its socket (see
:mod:`daebus.runtime`).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .eager import start_task

if TYPE_CHECKING:
    from ..app import Daebus
    from ..transport import Delivery

__all__ = ["QUEUED_OVERHEAD", "Admission"]

#: What a waiting message is counted as beyond its bytes (its objects in memory).
QUEUED_OVERHEAD = 100


class Admission:
    """The slots of one running service and the messages waiting for one."""

    def __init__(self, app: Daebus, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.capacity = app.max_in_flight
        #: Messages handled as tasks on the loop; changed on the loop only.
        self.tasks = 0
        #: ``def`` actions handed to the workers, and those of them that ended: the
        #: first is counted on the loop, the second in the workers under ``_lock``.
        self.jobs_started = 0
        self.jobs_finished = 0
        self._lock = threading.Lock()
        self._idle_waiters: list[asyncio.Future[None]] = []
        #: Tasks of messages that waited for something: what shutdown waits for.
        self.in_flight: set[asyncio.Task[Any]] = set()
        # True while messages wait for a slot and nothing is yet due to start them:
        # whoever frees a slot then calls admit_waiting on the loop. Set on the loop,
        # under _lock.
        self.waiting_for_slot = False
        #: Set when the service stops: nothing more is started.
        self.stopping = False
        #: Requests read while every slot was taken, oldest first: (kind, delivery).
        self.requests: deque[tuple[str, Delivery]] = deque()
        #: Broadcasts read and not started yet, oldest first.
        self.broadcasts: deque[Delivery] = deque()
        self.max_requests = app.max_queued
        #: Bytes of the waiting requests and broadcasts, each counted with some overhead.
        self.bytes = 0
        self.max_bytes = app.max_queued_bytes
        # What waiting messages start in, as the reader's: whoever frees a slot is in
        # the context of its own message, which must not leak into the next ones.
        self.reader_context = contextvars.copy_context()
        #: Counted while stopping, logged once.
        self.refused_at_stop = 0
        self.dropped_at_stop = 0
        self._start_request: Callable[[str, Delivery], None] = _unwired
        self._refuse_unrun: Callable[[str, Delivery, bool], None] = _unwired
        self._start_broadcasts: Callable[[], None] = _unwired
        self._drop_held: Callable[[], None] = _unwired

    def connect(
        self,
        *,
        start_request: Callable[[str, Delivery], None],
        refuse_unrun: Callable[[str, Delivery, bool], None],
        start_broadcasts: Callable[[], None],
        drop_held: Callable[[], None],
    ) -> None:
        """Name what starts, refuses (``stopping``?) or drops what waits for a slot.

        ``drop_held`` drops the broadcasts that ordered listeners hold.
        """
        self._start_request = start_request
        self._refuse_unrun = refuse_unrun
        self._start_broadcasts = start_broadcasts
        self._drop_held = drop_held

    # -- counts ----------------------------------------------------------------------
    @property
    def jobs(self) -> int:
        """``def`` actions running (or queued) in the workers."""
        return self.jobs_started - self.jobs_finished

    @property
    def active(self) -> int:
        """Messages being handled: the slots in use."""
        return self.tasks + self.jobs_started - self.jobs_finished

    @property
    def queued(self) -> int:
        """Messages read and waiting for a slot (requests and broadcasts)."""
        return len(self.requests) + len(self.broadcasts)

    @property
    def busy(self) -> int:
        """How many messages are being handled (tasks that wait, and ``def`` actions)."""
        return len(self.in_flight) + self.jobs

    # -- waiting for a slot ----------------------------------------------------------
    def wait_for_slot(self) -> bool:
        """Every slot is taken: have whoever frees one call :meth:`admit_waiting`.

        False if one was freed meanwhile (by a worker): the caller may go on.
        """
        with self._lock:  # a worker finishing now sees the flag, or we see its slot
            if self.tasks + self.jobs_started - self.jobs_finished < self.capacity:
                return False
            self.waiting_for_slot = True
            return True

    def hold(self, kind: str, delivery: Delivery) -> None:
        """Queue a request that cannot start now; refuse it if the queue is full."""
        if self.stopping:
            self._refuse_unrun(kind, delivery, True)
            return
        size = len(delivery.data) + QUEUED_OVERHEAD
        waiting = self.requests
        # One message alone may be larger than the bytes' bound: it is refused as such.
        if len(waiting) >= self.max_requests or (waiting and self.bytes + size > self.max_bytes):
            self._refuse_unrun(kind, delivery, False)
            return
        self.bytes += size
        waiting.append((kind, delivery))
        if not self.waiting_for_slot:
            self.admit_waiting()

    def admit_waiting(self) -> None:
        """Start waiting requests, oldest first, then broadcasts, while slots are free."""
        waiting = self.requests
        while waiting and not self.stopping:
            if self.tasks + self.jobs_started - self.jobs_finished >= self.capacity:
                if self.wait_for_slot():
                    return
                continue
            kind, delivery = waiting.popleft()
            self.bytes -= len(delivery.data) + QUEUED_OVERHEAD
            self._start_request(kind, delivery)
        self._start_broadcasts()

    def stop(self) -> None:
        """Start nothing more: refuse every waiting request (busy reply), drop broadcasts."""
        self.stopping = True
        self.max_bytes = 0
        waiting = list(self.requests)
        self.requests.clear()
        self.dropped_at_stop += len(self.broadcasts)
        self.broadcasts.clear()
        self._drop_held()
        self.bytes = 0
        for kind, delivery in waiting:
            self._refuse_unrun(kind, delivery, True)

    # -- taking and freeing slots ----------------------------------------------------
    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Handle a message in a task; ``work`` ends with :meth:`task_done`."""
        # Where Python starts tasks eagerly, the message's handler runs at once, up to
        # its first real wait, and one that never waits costs no extra turn of the loop.
        self.tasks += 1
        self.track(start_task(self.loop, work))

    def track(self, task: asyncio.Task[Any]) -> None:
        """Keep a message's task in :attr:`in_flight` until it ends, unless it has."""
        if not task.done():
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)

    def task_done(self) -> None:
        """A message's task ends: free its slot, and start what waits for one."""
        # Called by the message's own task as it ends: a done callback would cost one
        # more turn of the loop for every message, even one handled at once.
        self.tasks -= 1
        if self.waiting_for_slot:
            self.waiting_for_slot = False
            # Not started from here: this task is ending, and starting the next message
            # inside it would nest one in another as long as the queue.
            self.loop.call_soon(self.admit_waiting, context=self.reader_context)

    def job_done(self) -> None:
        """In a worker: a ``def`` action ended; wake the loop only if it waits for that."""
        with self._lock:
            self.jobs_finished += 1
            wake_admission, self.waiting_for_slot = self.waiting_for_slot, False
            idle_waiters: list[asyncio.Future[None]] = []
            if self.jobs_started == self.jobs_finished and self._idle_waiters:
                idle_waiters, self._idle_waiters = self._idle_waiters, []
        try:
            if wake_admission:
                self.loop.call_soon_threadsafe(self.admit_waiting, context=self.reader_context)
            if idle_waiters:
                self.loop.call_soon_threadsafe(_resolve_all, idle_waiters)
        except RuntimeError:  # the loop is closed: the service has stopped
            pass

    # -- waiting for quiet -----------------------------------------------------------
    async def settle(self) -> None:
        """Wait until no message is handled or waits, including ``def`` actions in workers."""
        while self.in_flight or self.jobs or self.requests or self.broadcasts:
            if self.in_flight:
                await asyncio.wait(set(self.in_flight))
            elif self.jobs:
                await self.jobs_done()
            else:  # free slots: their start is due on the loop
                await asyncio.sleep(0)

    async def jobs_done(self) -> None:
        """Wait until no ``def`` action is running in the workers."""
        while True:
            with self._lock:
                if not self.jobs:
                    return
                waiter = self.loop.create_future()
                self._idle_waiters.append(waiter)
            await waiter


def _unwired(*_args: Any) -> None:
    raise RuntimeError("Admission.connect() was not called")


def _resolve_all(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)
