"""Starting and stopping the app's ``@thread`` tasks: a part of :class:`~daebus.Daebus`.

Each task runs in a daemon thread of its own, in a context bound to the app, and gets a
``running()`` callable that turns false when the service stops or :meth:`stop_thread`
asks it to.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, cast

from . import context
from .runtime import loop as _loop
from .runtime.invoke import is_async_callable

if TYPE_CHECKING:
    from .app import Daebus
    from .runtime.jobs import ThreadTask

__all__ = ["ThreadTasks"]

log = logging.getLogger("daebus.app")


class ThreadTasks:
    """``start_thread`` and ``stop_thread``, mixed into the app."""

    thread_tasks: dict[str, ThreadTask]
    threads: dict[str, threading.Thread]
    _running: bool

    def start_thread(self, name: str) -> bool:
        """Start a registered thread task; False if unknown or already running."""
        task = self.thread_tasks.get(name)
        if task is None:
            log.warning("no thread task named %r", name)
            return False
        if task.is_alive():
            log.warning("thread task %r is already running", name)
            return False
        task.stop_requested.clear()
        ctx = context.MessageContext(cast("Daebus", self))
        thread = threading.Thread(
            target=self._run_thread, args=(task, ctx), name=f"daebus_{name}", daemon=True
        )
        task.thread = thread
        self.threads[name] = thread
        thread.start()
        return True

    def _run_thread(self, task: Any, ctx: context.MessageContext) -> None:
        def running() -> bool:
            return self._running and not task.stop_requested.is_set()

        with context.bind(ctx):
            try:
                args = (running,) if task.takes_running else ()
                if is_async_callable(task.func):
                    _loop.run(task.func(*args))
                else:
                    task.func(*args)
            except Exception:
                log.exception("thread task %r failed", task.name)

    def stop_thread(self, name: str, timeout: float = 5.0) -> bool:
        """Ask a thread task to stop (its ``running()`` turns false) and wait for it.

        Returns True once the thread has ended, False if unknown or still alive.
        """
        task = self.thread_tasks.get(name)
        if task is None:
            log.warning("no thread task named %r", name)
            return False
        task.stop_requested.set()
        if task.thread is not None and task.thread is not threading.current_thread():
            task.thread.join(timeout)
        if task.is_alive():
            log.warning("thread task %r did not stop within %.1fs", name, timeout)
            return False
        return True

    def _join_threads(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for task in self.thread_tasks.values():
            task.stop_requested.set()
        for task in self.thread_tasks.values():
            thread = task.thread
            if thread is None or thread is threading.current_thread():
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("thread task %r is still running at shutdown", task.name)
