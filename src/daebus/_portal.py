"""A background event loop that serves the blocking API (``DaebusCaller``).

One daemon thread per process runs it; it holds the subscriber connections that route
replies to waiting threads. It idles without waking up.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .runtime.inbox import LoopInbox
from .runtime.loop import new_event_loop

T = TypeVar("T")

__all__ = ["Portal", "get_portal"]

logger = logging.getLogger("daebus.portal")


class Portal:
    """An event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = new_event_loop()
        self._started = threading.Event()
        self._inbox = LoopInbox(self.loop)
        #: False once the loop has stopped (cheaper to read than ``thread.is_alive()``).
        self.running = True
        self.thread = threading.Thread(target=self._main, name="daebus-portal", daemon=True)
        self.thread.start()
        self._started.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        try:
            self.loop.run_forever()
        finally:
            self.running = False
            self.loop.close()  # its self-pipe (asyncio) or handles (uvloop)

    def shutdown(self, timeout: float = 2.0) -> None:
        """Cancel the portal's tasks (closing their connections) and stop its loop."""
        if not self.thread.is_alive():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_cancel_all(), self.loop).result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)

    def call_soon_batched(self, func: Callable[..., Any], *args: Any) -> None:
        """Run ``func(*args)`` on the loop soon, from any thread, in call order.

        Unlike ``call_soon_threadsafe``, calls made while an earlier one still waits
        to run do not wake the loop again: under load, one wake-up runs them all.
        """
        self._inbox.call_soon(func, *args)

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the portal's loop and wait for its result."""
        if threading.current_thread() is self.thread:
            coroutine.close()
            raise RuntimeError("a blocking daebus call was made on the portal's own loop")
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


async def _cancel_all() -> None:
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


_portal: Portal | None = None
_lock = threading.Lock()


def get_portal() -> Portal:
    """The process's portal, started on first use."""
    global _portal
    portal = _portal
    if portal is not None and portal.running:  # the common case, without the lock
        return portal
    with _lock:
        if _portal is None or not _portal.running or not _portal.thread.is_alive():
            _portal = Portal()
        return _portal


@atexit.register
def _shutdown_at_exit() -> None:
    portal = _portal
    if portal is not None:
        portal.shutdown()


def _forget_after_fork() -> None:
    # The child has no portal thread; start a fresh one when it is needed.
    global _portal, _lock
    _portal = None
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
