"""Calling user code: the one place that decides how a handler is called.

A handler is ``async def`` (awaited on the loop), an async generator (each part it
yields is sent as a reply part), or plain ``def`` (run in a worker thread, in a copy of
the caller's context; a generator's parts are sent as it yields them, and an awaitable
it returns is finished on the loop). Pub/sub actions, listeners, hooks, background jobs,
HTTP routes and WebSocket handlers are all called through :class:`Invoker`; what a
handler is, and how many arguments it takes, is asked of :func:`kind_of` and
:func:`accepts_arguments`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import Any, Protocol, TypeVar

from .. import context

__all__ = [
    "ASYNC",
    "ASYNC_GENERATOR",
    "START_BY",
    "SYNC",
    "HandlerExitError",
    "Invoker",
    "Parts",
    "StartedTooLateError",
    "Workers",
    "accepts_arguments",
    "error_text",
    "is_async_callable",
    "kind_of",
]

T = TypeVar("T")

#: How a handler is called (what :func:`kind_of` answers); compared with ``is``.
ASYNC, ASYNC_GENERATOR, SYNC = "async", "async generator", "sync"


def is_async_callable(func: Any) -> bool:
    """True for ``async def`` functions, and objects whose ``__call__`` is one."""
    while isinstance(func, functools.partial):
        func = func.func
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - we want the method, not callable()
    )


# Cached: dispatch asks for every message, and inspect.signature is slow for that path.
@functools.lru_cache(maxsize=1024)
def accepts_arguments(func: Callable[..., Any], count: int) -> bool:
    """True if ``func`` can be called with ``count`` positional arguments."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return True
    positional = 0
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_POSITIONAL:
            return True
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= count


def _inspect_kind(func: Callable[..., Any]) -> str:
    if inspect.isasyncgenfunction(func):
        return ASYNC_GENERATOR
    return ASYNC if is_async_callable(func) else SYNC


# What is learnt by inspecting a handler, per handler: inspecting it again for every
# message would cost more than most handlers do.
_remembered: dict[tuple[Callable[..., Any], Any], Any] = {}


def _remember(inspection: Callable[[Any], T], func: Any) -> T:
    try:
        return _remembered[inspection, func]  # type: ignore[no-any-return]
    except (KeyError, TypeError):
        pass
    found = inspection(func)
    with contextlib.suppress(TypeError):  # an unhashable callable: not remembered
        if len(_remembered) < 10_000:
            _remembered[inspection, func] = found
    return found


def kind_of(func: Callable[..., Any]) -> str:
    """How a handler is called: :data:`ASYNC`, :data:`ASYNC_GENERATOR` or :data:`SYNC`."""
    return _remember(_inspect_kind, func)


#: When (``time.time()``) a ``def`` handler still waiting for a worker is no longer to be
#: called at all: set in the context of a call whose caller stops waiting then (a
#: durable request), it reaches the worker with the context.
START_BY: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "daebus_start_by", default=None
)


class StartedTooLateError(Exception):
    """A handler was not called: a worker was free for it only after :data:`START_BY`."""


class HandlerExitError(Exception):
    """A handler raised ``SystemExit`` (or another non-``Exception``): a plain failure here."""

    def __str__(self) -> str:
        return error_text(self.args[0])


def error_text(exc: BaseException) -> str:
    """What an error reply says of ``exc``: its message, else its type's name."""
    try:
        text = str(exc)
    except Exception:  # its __str__ failed: the caller is answered all the same
        text = ""
    return text or type(exc).__name__


class Workers(Protocol):
    """Where ``def`` handlers run: a :class:`~.workers.WorkerPool`, or what wraps one."""

    def run(self, func: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``func(*args)`` in a worker thread; call on the loop."""
        ...


class Parts(Protocol):
    """Where a generator handler's parts go: a reply (``PubSubResponse``), say."""

    def send(self, payload: Any, final: bool = True) -> Any:
        """Send one part (``final=False``); may return an awaitable."""
        ...


class Invoker:
    """Calls handlers: on ``loop`` if async, else in ``pool``'s worker threads."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: Workers) -> None:
        self.loop = loop
        self.pool = pool

    async def invoke(
        self,
        func: Callable[..., Any],
        ctx: context.MessageContext,
        args: tuple[Any, ...],
        response: Parts | None = None,
        executor: Workers | None = None,
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        """Call ``func(*args, **kwargs)`` with ``ctx`` current and return what it returns.

        ``kwargs`` are an HTTP route's path parameters, say. An async generator's parts,
        and a ``def`` generator's, go to ``response`` as reply parts (and are dropped
        without one); a ``def`` handler runs in ``executor``, by default :attr:`pool`.
        ``SystemExit`` and the like come out as :class:`HandlerExitError`: raised in a
        task, they would stop the loop.
        """
        token = context.push(ctx)
        try:
            kind = kind_of(func)
            if kind is ASYNC:
                return await (func(*args, **kwargs) if kwargs else func(*args))
            if kind is ASYNC_GENERATOR:
                async for part in func(*args, **kwargs) if kwargs else func(*args):
                    if response is not None:
                        await _maybe_await(response.send(part, final=False))
                return None
            if kwargs:
                # Made after kind_of(): one partial a call must not fill its cache.
                func = functools.partial(func, **kwargs)
            copied = contextvars.copy_context()
            return await (executor or self.pool).run(
                copied.run, self.call_sync, func, args, response
            )
        except (asyncio.CancelledError, Exception):
            raise
        except BaseException as exc:
            # KeyboardInterrupt too: a service takes Ctrl-C as a signal (app.run) or as
            # its task's cancellation (asyncio.run), so one out of a handler is the
            # handler's own; raised in a task, it would stop the event loop.
            raise HandlerExitError(exc) from exc
        finally:
            context.pop(token)

    def call_sync(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        response: Parts | None,
    ) -> Any:
        """Call a ``def`` handler in this (worker) thread; see :meth:`invoke`."""
        start_by = START_BY.get()
        if start_by is not None and time.time() > start_by:
            raise StartedTooLateError(f"{time.time() - start_by:.1f} s after its caller gave up")
        result = func(*args)
        if inspect.isgenerator(result):
            result = drive(result, response)
        elif inspect.isawaitable(result):
            # A plain function that returned an awaitable (e.g. a decorator around an
            # async def): finish it on the loop.
            result = asyncio.run_coroutine_threadsafe(_await(result), self.loop).result()
        return result


def drive(generator: Generator[Any, Any, Any], response: Parts | None) -> Any:
    """Send each part a generator handler yields; return its return value."""
    while True:
        try:
            part = next(generator)
        except StopIteration as stop:
            return stop.value
        if response is not None:
            response.send(part, final=False)


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value
