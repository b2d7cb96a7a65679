"""Calls into an event loop from other threads, batched under load."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["LoopInbox"]

logger = logging.getLogger("daebus.loop")


class LoopInbox:
    """Runs ``func(*args)`` on a loop soon, from any thread, in call order.

    Unlike ``loop.call_soon_threadsafe``, a call made while an earlier one still waits
    to run does not wake the loop again: under load, one wake-up runs them all.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._calls: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def call_soon(self, func: Callable[..., Any], *args: Any) -> None:
        """Queue the call; raises ``RuntimeError`` (and runs nothing) if the loop is closed."""
        self._calls.append((func, args))
        with self._lock:
            if self._scheduled:
                return  # the run already scheduled will take this call too
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._run)
        except RuntimeError:
            with self._lock:
                self._scheduled = False
            raise

    def _run(self) -> None:
        with self._lock:
            self._scheduled = False
        calls = self._calls
        while calls:
            func, args = calls.popleft()
            try:
                func(*args)
            except Exception:
                logger.exception("a call handed to the event loop failed")
