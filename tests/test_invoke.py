"""runtime/invoke.py: how a handler is called, whatever calls it (pub/sub, HTTP, WebSocket).

The Invoker is driven directly here, on a test's own loop with a real worker pool: the
services that call it are tested over the wire in test_service.py, test_http.py and
test_websocket.py.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import pytest

from daebus import context
from daebus.runtime.invoke import (
    ASYNC,
    ASYNC_GENERATOR,
    SYNC,
    HandlerExitError,
    Invoker,
    kind_of,
)
from daebus.runtime.workers import WorkerPool

T = TypeVar("T")


class Parts:
    """A reply that keeps the parts it is sent."""

    def __init__(self) -> None:
        self.parts: list[Any] = []

    def send(self, payload: Any, final: bool = True) -> None:
        assert not final
        self.parts.append(payload)


class RecordingPool:
    """A pool that keeps the future of each job it runs, as the HTTP component's does."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.futures: list[asyncio.Future[Any]] = []

    def run(self, func: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        future = self.pool.run(func, *args)
        self.futures.append(future)
        return future


@pytest.fixture
async def pool() -> AsyncIterator[WorkerPool]:
    workers = WorkerPool(asyncio.get_running_loop(), 2, "test_invoke")
    yield workers
    workers.shutdown(wait=False)


def ctx() -> context.MessageContext:
    return context.MessageContext(None, "test", {"the": "request"})  # type: ignore[arg-type]


async def test_each_kind_gets_positional_and_keyword_arguments(pool: WorkerPool) -> None:
    invoker = Invoker(asyncio.get_running_loop(), pool)

    def plain(req: Any, *, item: str) -> Any:
        return {"req": req, "item": item, "worker": threading.current_thread().name}

    async def coroutine(req: Any, *, item: str) -> Any:
        return {"req": req, "item": item}

    async def stream(req: Any, *, item: str) -> AsyncIterator[str]:
        yield f"{req}/{item}"

    def generator(req: Any, *, item: str) -> Iterator[str]:
        yield f"{req}/{item}"
        return "done"

    assert [kind_of(f) for f in (plain, coroutine, stream)] == [SYNC, ASYNC, ASYNC_GENERATOR]
    kwargs = {"item": "42"}
    got = await invoker.invoke(plain, ctx(), ("r",), kwargs=kwargs)
    assert (got["req"], got["item"]) == ("r", "42")
    assert got["worker"].startswith("test_invoke")
    assert await invoker.invoke(coroutine, ctx(), ("r",), kwargs=kwargs) == {
        "req": "r",
        "item": "42",
    }
    for handler, returned in ((stream, None), (generator, "done")):
        parts = Parts()
        assert await invoker.invoke(handler, ctx(), ("r",), parts, kwargs=kwargs) == returned
        assert parts.parts == ["r/42"]


async def test_no_keyword_arguments_is_the_same_as_none(pool: WorkerPool) -> None:
    invoker = Invoker(asyncio.get_running_loop(), pool)

    def plain(*args: Any, **kwargs: Any) -> Any:
        return args, kwargs

    async def coroutine(*args: Any, **kwargs: Any) -> Any:
        return args, kwargs

    for handler in (plain, coroutine):
        assert await invoker.invoke(handler, ctx(), (1,), kwargs={}) == ((1,), {})
        assert await invoker.invoke(handler, ctx(), (1,), kwargs={"x": 2}) == ((1,), {"x": 2})


async def test_def_handlers_run_in_the_executor_given(pool: WorkerPool) -> None:
    """A caller can keep the future of each ``def`` handler's job (to answer it at stop)."""
    invoker = Invoker(asyncio.get_running_loop(), pool)
    recording = RecordingPool(WorkerPool(asyncio.get_running_loop(), 1, "own_pool"))
    try:

        def where(req: Any) -> str:
            current = context.current_context()
            assert current is not None
            assert current.request == {"the": "request"}
            return threading.current_thread().name

        assert (await invoker.invoke(where, ctx(), ("r",), executor=recording)).startswith(
            "own_pool"
        )
        assert len(recording.futures) == 1
        assert recording.futures[0].done()
        # An Invoker given the recording pool uses it for every def handler.
        own = Invoker(asyncio.get_running_loop(), recording)
        assert (await own.invoke(where, ctx(), ("r",))).startswith("own_pool")
        assert len(recording.futures) == 2
    finally:
        recording.pool.shutdown(wait=False)


async def test_an_awaitable_a_def_handler_returns_is_finished_on_the_loop(
    pool: WorkerPool,
) -> None:
    loop = asyncio.get_running_loop()
    invoker = Invoker(loop, pool)
    ran_on: list[threading.Thread] = []

    async def inner(item: str) -> str:
        ran_on.append(threading.current_thread())
        return item

    def wrapper(req: Any, **kwargs: Any) -> Any:  # a decorator around an async def
        return inner(**kwargs)

    assert await invoker.invoke(wrapper, ctx(), ("r",), kwargs={"item": "x"}) == "x"
    assert ran_on == [threading.current_thread()]


async def test_system_exit_comes_out_as_a_plain_failure(pool: WorkerPool) -> None:
    invoker = Invoker(asyncio.get_running_loop(), pool)

    def leave(req: Any) -> None:
        raise SystemExit(3)

    async def leave_async(req: Any) -> None:
        raise SystemExit(4)

    def interrupt(req: Any) -> None:
        raise KeyboardInterrupt

    async def interrupt_async(req: Any) -> None:
        raise KeyboardInterrupt

    for handler, raised in (
        (leave, SystemExit),
        (leave_async, SystemExit),
        (interrupt, KeyboardInterrupt),
        (interrupt_async, KeyboardInterrupt),
    ):
        with pytest.raises(HandlerExitError) as caught:
            await invoker.invoke(handler, ctx(), ("r",))
        assert isinstance(caught.value.args[0], raised)
