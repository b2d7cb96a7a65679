"""The worker threads that run plain ``def`` handlers for a service's event loop.

``loop.run_in_executor`` costs two futures, a chain of callbacks and one wake-up of the
loop per call. Under load most of a ``def`` handler's overhead was that hand-off, so the
pool talks to its loop directly: jobs go out through one ``SimpleQueue``, and the
results of every job that finished while the loop was busy come back with a single
wake-up. It is also a regular :class:`concurrent.futures.Executor` (``app.thread_pool``
in 0.0.31 was one), for code that submits its own work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["WorkerPool"]

T = TypeVar("T")

logger = logging.getLogger("daebus.runtime")

#: None for a job whose function handles its own outcome (``call``).
_Target = asyncio.Future[Any] | concurrent.futures.Future[Any] | None
_Job = tuple[_Target, Callable[..., Any], tuple[Any, ...]]


class WorkerPool(concurrent.futures.Executor):
    """Up to ``max_workers`` daemon threads, started as work arrives."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_workers: int, name: str) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._loop = loop
        self._max_workers = max_workers
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        # Workers done with their last job and not yet given another: a new job goes
        # to one of them instead of to a new thread. (A plain count under ``_lock``: a
        # threading.Semaphore costs a Condition per call.)
        self._idle = 0
        self._lock = threading.Lock()
        self._finished: deque[tuple[asyncio.Future[Any], bool, Any]] = deque()
        self._wake_pending = False
        self._shutdown = False

    @property
    def max_workers(self) -> int:
        """How many threads the pool may run at once."""
        return self._max_workers

    # -- from the loop ---------------------------------------------------------------
    def run(self, func: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``func(*args)`` in a worker; call on the loop. The future gets the result."""
        future: asyncio.Future[T] = self._loop.create_future()
        self._put((future, func, args))
        return future

    def call(self, func: Callable[..., Any], *args: Any) -> None:
        """Run ``func(*args)`` in a worker and forget it: ``func`` reports its own outcome.

        Nothing comes back to the loop, so the loop is not woken when it ends.
        """
        self._put((None, func, args))

    def _deliver(self) -> None:
        with self._lock:
            self._wake_pending = False
        finished = self._finished
        while finished:
            future, ok, value = finished.popleft()
            if future.done():
                continue  # cancelled meanwhile
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    # -- from anywhere ---------------------------------------------------------------
    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        """Schedule ``fn(*args, **kwargs)`` (the :class:`~concurrent.futures.Executor` API)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        if kwargs:
            self._put((future, lambda: fn(*args, **kwargs), ()))
        else:
            self._put((future, fn, args))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the threads once their current job is done; optionally drop queued jobs."""
        with self._lock:
            self._shutdown = True
            threads = list(self._threads)
        if cancel_futures:
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    self._cancel(job[0])
        for _ in threads:
            self._jobs.put(None)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()

    def _cancel(self, target: _Target) -> None:
        if target is None:
            return
        if isinstance(target, concurrent.futures.Future):
            target.cancel()
        else:
            self._loop.call_soon_threadsafe(target.cancel)

    def _put(self, job: _Job) -> None:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new work after shutdown")
            self._jobs.put(job)
            if self._idle:
                self._idle -= 1
                return
            if len(self._threads) >= self._max_workers:
                return
            thread = threading.Thread(
                target=self._work,
                name=f"{self._name}_{len(self._threads)}",
                daemon=True,  # a handler stuck for ever must not keep the process alive
            )
            self._threads.append(thread)
        thread.start()

    # -- in the workers --------------------------------------------------------------
    def _work(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is None:
                return
            target, func, args = job
            del job
            if target is None:
                try:
                    func(*args)
                except BaseException:
                    logger.exception("a worker job failed")
            elif isinstance(target, concurrent.futures.Future):
                if target.set_running_or_notify_cancel():
                    try:
                        target.set_result(func(*args))
                    except BaseException as exc:
                        target.set_exception(exc)
            else:
                try:
                    outcome: tuple[asyncio.Future[Any], bool, Any] = (target, True, func(*args))
                except StopIteration as exc:  # a future cannot hold StopIteration
                    outcome = (target, False, RuntimeError(f"handler raised {exc!r}"))
                except BaseException as exc:
                    outcome = (target, False, exc)
                self._finish(outcome)
                del outcome
            del target, func, args
            with self._lock:
                self._idle += 1

    def _finish(self, outcome: tuple[asyncio.Future[Any], bool, Any]) -> None:
        self._finished.append(outcome)
        with self._lock:
            if self._wake_pending:
                return  # the loop has yet to run the last wake-up: it will see this too
            self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: nobody waits any more
            logger.debug("a handler finished after its loop closed")
