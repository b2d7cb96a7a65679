"""Starting a message's work at once, without waiting for a turn of the loop.

A handler that never waits (an async action whose reply is only queued, a listener
that counts) can be run to its end on the spot, where the transport hands the message
over, instead of a turn of the loop later. Two public ways are used:

- :func:`start_task` makes a task that starts eagerly where Python provides it
  (``eager_start``, 3.12 and later); before 3.12 it is a plain task, started on the
  loop's next turn.
- :func:`first_step` and :func:`finish` run a coroutine by hand inside a task that is
  already running (a batch of broadcasts): its first step now, in a context of its own,
  and, if it waits, the rest as ``await`` would, still in that context.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any

__all__ = ["Stepped", "finish", "first_step", "start_task"]

if sys.version_info >= (3, 12):

    def start_task(
        loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, None]
    ) -> asyncio.Task[None]:
        """A task for ``coroutine``, run up to its first wait before this returns."""
        return asyncio.Task(coroutine, loop=loop, eager_start=True)

else:  # pragma: no cover - only one branch runs on a given Python

    def start_task(
        loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, None]
    ) -> asyncio.Task[None]:
        """A task for ``coroutine``, started on the loop's next turn (no eager start)."""
        return loop.create_task(coroutine)


class Stepped:
    """A coroutine run by hand up to its first wait: what it waits on, and its context."""

    __slots__ = ("context", "coroutine", "waiting_on")

    def __init__(
        self,
        coroutine: Coroutine[Any, None, None],
        context: contextvars.Context,
        waiting_on: Any,
    ) -> None:
        self.coroutine = coroutine
        self.context = context
        self.waiting_on = waiting_on


def first_step(coroutine: Coroutine[Any, None, None]) -> Stepped | None:
    """Run ``coroutine`` up to its first wait, in a copy of the current context.

    None if it ran to its end; else what :func:`finish` needs to see it through. It
    must be finished from inside the task that is running now: that task is the one
    the coroutine sees as its own (``asyncio.current_task()``, timeouts, cancellation).
    Exceptions it raises come out of this call.
    """
    own = contextvars.copy_context()
    try:
        waiting_on = own.run(coroutine.send, None)
    except StopIteration:
        return None
    return Stepped(coroutine, own, waiting_on)


@types.coroutine
def finish(stepped: Stepped) -> Generator[Any, Any, None]:
    """Await the rest of a coroutine :func:`first_step` started, each step in its context.

    What ``await coroutine`` would do from where it waits, with the coroutine's own
    context current in each step rather than the awaiting task's.
    """
    coroutine, own, waiting_on = stepped.coroutine, stepped.context, stepped.waiting_on
    while True:
        try:
            sent = yield waiting_on
        except BaseException as exc:  # cancellation, thrown in by the task; GeneratorExit
            step: Callable[[Any], Any] = coroutine.throw
            value: Any = exc
        else:
            step, value = coroutine.send, sent
        try:
            waiting_on = own.run(step, value)
        except StopIteration:
            return
