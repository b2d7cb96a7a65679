"""The event loop daebus runs on: uvloop where it is installed, else asyncio's own.

``$DAEBUS_EVENT_LOOP`` chooses: ``auto`` (the default: uvloop if it can be imported),
``uvloop`` (an error if it cannot) or ``asyncio``. It applies to the loops daebus
creates itself: ``app.run``, ``app.start``, ``async def`` thread tasks, the blocking
caller's background loop and the command line. ``await app.serve()`` runs on whatever
loop the caller already has.

uvloop runs each wake-up of the loop in C, where asyncio's own loop runs its selector
and callbacks in Python: a listener woken for each lone broadcast spends markedly less
per message on it (bench/README.md records the figures).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from types import ModuleType
from typing import Any, TypeVar

from ..exceptions import SetupError

__all__ = ["ENV_EVENT_LOOP", "loop_name", "new_event_loop", "run"]

T = TypeVar("T")

ENV_EVENT_LOOP = "DAEBUS_EVENT_LOOP"
_CHOICES = ("auto", "uvloop", "asyncio")


def _uvloop() -> ModuleType | None:
    """The uvloop module if it is to be used, else None (the environment is read each time).

    Raises:
        SetupError: ``$DAEBUS_EVENT_LOOP`` is not one of auto, uvloop, asyncio, or it
            is ``uvloop`` and uvloop cannot be imported.
    """
    choice = os.environ.get(ENV_EVENT_LOOP, "").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise SetupError(
            f"${ENV_EVENT_LOOP}={os.environ[ENV_EVENT_LOOP]!r}: use one of {', '.join(_CHOICES)}"
        )
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError as exc:
        if choice == "uvloop":
            raise SetupError(f"${ENV_EVENT_LOOP}=uvloop, but uvloop is not installed") from exc
        return None
    return uvloop


def loop_name() -> str:
    """``"uvloop"`` or ``"asyncio"``: what :func:`new_event_loop` and :func:`run` use."""
    return "asyncio" if _uvloop() is None else "uvloop"


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop of the chosen kind."""
    uvloop = _uvloop()
    if uvloop is None:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on a loop of the chosen kind."""
    try:
        uvloop = _uvloop()
    except SetupError:
        main.close()  # never awaited: no warning on top of the error
        raise
    if uvloop is None:
        return asyncio.run(main)
    runner: Callable[[Coroutine[Any, Any, T]], T] = uvloop.run
    return runner(main)
