"""The running state of a service: its loop, transport, worker pool and dispatch.

One :class:`ServiceRuntime` exists per ``serve()``. Messages come off the transport on
the event loop; each is handled in its own task, with its own context. ``async def``
handlers run on the loop, plain ``def`` handlers in the worker pool. At most
``max_in_flight`` messages are handled at once; past that the reader stops reading, so
pressure goes back to the socket instead of into an unbounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any

from . import context, encoding, protocol
from ._workers import WorkerPool
from .exceptions import SerializationError, TransportError
from .pubsub import PubSubRequest, PubSubResponse
from .scheduler import BackgroundTask, accepts_arguments
from .transport import Delivery, Subscription, Transport

if TYPE_CHECKING:
    from .app import Daebus

logger = logging.getLogger("daebus.runtime")
flow = logging.getLogger("daebus.flow")

_PREVIEW = 200


def _preview(data: bytes) -> str:
    text = data[:_PREVIEW].decode("utf-8", "replace")
    return text + ("..." if len(data) > _PREVIEW else "")


def is_async_callable(func: Any) -> bool:
    """True for ``async def`` functions, and objects whose ``__call__`` is one."""
    while isinstance(func, functools.partial):
        func = func.func
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - we want the method, not callable()
    )


if sys.version_info >= (3, 12):

    def _new_task(
        loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, None]
    ) -> asyncio.Task[None]:
        return asyncio.Task(coroutine, loop=loop, eager_start=True)

else:  # eager tasks are new in 3.12

    def _new_task(
        loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, None]
    ) -> asyncio.Task[None]:
        return loop.create_task(coroutine)


_ASYNC, _ASYNC_GENERATOR, _SYNC = "async", "async generator", "sync"
_kinds: dict[Any, str] = {}


def _kind_of(func: Callable[..., Any]) -> str:
    """How a handler is called; remembered per handler (the inspection costs ~8 us)."""
    try:
        return _kinds[func]
    except (KeyError, TypeError):
        pass
    if inspect.isasyncgenfunction(func):
        kind = _ASYNC_GENERATOR
    elif is_async_callable(func):
        kind = _ASYNC
    else:
        kind = _SYNC
    with contextlib.suppress(TypeError):  # an unhashable callable: not remembered
        if len(_kinds) < 10_000:
            _kinds[func] = kind
    return kind


def _error_text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class Publisher:
    """``publish(channel, data)`` for the app: ordered futures on the loop, blocking elsewhere."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self._runtime = runtime

    def publish(self, channel: str, data: bytes) -> Any:
        """Publish; on the loop returns a future of the receiver count, elsewhere the count."""
        runtime = self._runtime
        if threading.get_ident() == runtime.loop_thread:
            future = runtime.transport.publish_nowait(channel, data)
            future.add_done_callback(functools.partial(_report_failure, channel))
            return future
        return runtime.transport.publish_blocking(channel, data)

    def publish_detached(self, channel: str, data: bytes) -> None:
        """Publish without waiting for the receiver count (off the loop)."""
        runtime = self._runtime
        if threading.get_ident() == runtime.loop_thread:
            self.publish(channel, data)
        else:
            runtime.transport.publish_detached(channel, data)


def _report_failure(channel: str, future: asyncio.Future[int]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.warning("publish to %r failed: %s", channel, future.exception())


class ServiceRuntime:
    """Everything that exists only while a service runs."""

    def __init__(self, app: Daebus, service: str, transport: Transport) -> None:
        self.app = app
        self.service = service
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.publisher = Publisher(self)
        self.executor = WorkerPool(self.loop, app.max_workers, f"daebus_{service}")
        # Jobs and hooks get their own threads, so a busy worker pool cannot starve them.
        self.job_executor = WorkerPool(self.loop, 8, f"daebus_{service}_job")
        self.capacity = app.max_in_flight
        self.active = 0
        self.slot_free = asyncio.Event()
        self.in_flight: set[asyncio.Task[Any]] = set()
        self.subscriptions: dict[tuple[str, str], Subscription] = {}
        self.schedules: dict[str, asyncio.Task[None]] = {}
        # The loop only keeps weak references to tasks: hold on to fire-and-forget ones.
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self.stopping = False

    # -- start -----------------------------------------------------------------------
    async def start(self) -> None:
        """Subscribe everything, start jobs and threads, then run the start hooks."""
        app = self.app
        await self._subscribe("request", protocol.service_channel(self.service))
        if app.workflow_handlers:
            await self._subscribe("workflow", protocol.workflow_channel(self.service))
        for channel in list(app.listen_handlers):
            await self.subscribe_listener(channel)
        logger.info(
            "service %r listening on %r (%d action(s), %d listener(s)) via %s",
            self.service,
            protocol.service_channel(self.service),
            len(app.action_handlers),
            len(app.listen_handlers),
            self.transport.url,
        )
        for task in app.background_tasks:
            self.schedule(task)
        for name, thread_task in list(app.thread_tasks.items()):
            if thread_task.auto_start:
                app.start_thread(name)
        for hook in list(app._on_start_handlers):
            await self.run_hook(hook, "start")

    async def _subscribe(self, kind: str, name: str) -> None:
        if (kind, name) in self.subscriptions:
            return
        if kind == "listener":
            handler: Callable[[Delivery], Awaitable[None] | None] = self.on_broadcast
        else:
            handler = functools.partial(self.on_request, kind)
        self.subscriptions[kind, name] = await self.transport.subscribe(
            name, handler, pattern=kind == "listener" and protocol.is_pattern(name)
        )

    def keep(self, task: asyncio.Task[Any]) -> None:
        """Hold a reference to a fire-and-forget task until it finishes."""
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def subscribe_listener(self, channel: str) -> None:
        """Start receiving broadcasts for a listener's channel or pattern."""
        await self._subscribe("listener", channel)

    # -- admission (back-pressure) ---------------------------------------------------
    def _admit(self, work: Callable[[], Coroutine[Any, Any, None]]) -> Awaitable[None] | None:
        if self.active < self.capacity:
            self._spawn(work)
            return None
        return self._admit_when_free(work)

    async def _admit_when_free(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        while self.active >= self.capacity:
            self.slot_free.clear()
            await self.slot_free.wait()
        self._spawn(work)

    def _spawn(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        # On Python 3.12+ the task starts eagerly: the message's handler runs at once, up
        # to its first real wait, and one that never waits (most listeners, async
        # actions whose reply is only queued) costs no extra turn of the loop.
        self.active += 1
        task = _new_task(self.loop, self._handle(work()))
        if not task.done():
            self.in_flight.add(task)

    async def _handle(self, message: Coroutine[Any, Any, None]) -> None:
        # The slot is given back here rather than in a done callback: one callback less
        # to schedule per message.
        try:
            await message
        except Exception:
            logger.exception("message task failed")
        finally:
            task = asyncio.current_task()
            if task is not None:
                self.in_flight.discard(task)
            self.active -= 1
            self.slot_free.set()

    # -- requests --------------------------------------------------------------------
    def on_request(self, kind: str, delivery: Delivery) -> Awaitable[None] | None:
        """Transport callback for the service (and workflow) channel."""
        if self.stopping:
            return None
        return self._admit(functools.partial(self.handle_request, kind, delivery))

    async def handle_request(self, kind: str, delivery: Delivery) -> None:
        """Decode, validate and dispatch one request; every failure gets an error reply."""
        try:
            message = protocol.decode_object(delivery.data)
        except protocol.BadMessageError as exc:
            address = protocol.recover_reply_address(delivery.data)
            if address is None:
                logger.warning(
                    "dropped a message on %r that cannot be answered (%s): %s",
                    delivery.channel,
                    exc,
                    _preview(delivery.data),
                )
                return
            reply_to, request_id = address
            malformed = PubSubRequest({"reply_to": reply_to, "request_id": request_id})
            await self._refuse(
                PubSubResponse(self.publisher, malformed), f"malformed request: {exc}"
            )
            return
        request = PubSubRequest(message)
        request.channel = delivery.channel
        response = PubSubResponse(
            self.publisher, request, max_message_size=self.app.max_message_size
        )
        if request.reply_to is not None and not isinstance(request.reply_to, str):
            logger.warning("dropped a request with a non-string reply_to %r", request.reply_to)
            return
        table = self.app.action_handlers if kind == "request" else self.app.workflow_handlers
        name = message.get("action") if kind == "request" else message.get("workflow")
        if name is None and kind == "workflow":
            name = message.get("action")
        if flow.isEnabledFor(logging.DEBUG):
            flow.debug(
                "-> %s %s request_id=%s reply_to=%s payload=%s",
                delivery.channel,
                name,
                request.request_id,
                request.reply_to,
                _preview(delivery.data),
            )
        if len(delivery.data) > self.app.max_message_size:
            await self._refuse(
                response,
                f"request of {len(delivery.data)} bytes is over the "
                f"{self.app.max_message_size}-byte limit",
            )
            return
        if not name:
            await self._refuse(response, "request has no action")
            return
        if not isinstance(name, str):
            await self._refuse(response, f"action must be a string, not {type(name).__name__}")
            return
        handler = table.get(name)
        if handler is None:
            await self._refuse(response, f"Unknown action '{name}' for service '{self.service}'")
            return
        ctx = context.MessageContext(self.app, "pubsub", request, response)
        try:
            result = await self.invoke(handler, ctx, (), response, reply=True)
            await response.flush()
            if not response.final_sent and request.reply_to is not None:
                await self._reply(response, result)
        except Exception as exc:
            logger.exception("action %r of %r failed", name, self.service)
            if not response.final_sent:
                await self._refuse(response, _error_text(exc), log=False)

    async def _reply(self, response: PubSubResponse, result: Any) -> None:
        try:
            count = response.send(result)
        except SerializationError as exc:
            await self._refuse(response, f"could not encode the reply: {exc}")
            return
        if asyncio.isfuture(count):
            await count

    async def _refuse(self, response: PubSubResponse, message: str, *, log: bool = True) -> None:
        """Answer with an error reply if the request has a ``reply_to``; log otherwise."""
        request = response.request
        if log:
            logger.warning("%s (request_id=%s)", message, request.request_id)
        if request.reply_to is None:
            return
        try:
            sent = response.error(message)
            if asyncio.isfuture(sent):
                await sent
        except (TransportError, SerializationError) as exc:
            logger.error("could not send the error reply to %s: %s", request.reply_to, exc)

    # -- broadcasts ------------------------------------------------------------------
    def on_broadcast(self, delivery: Delivery) -> Awaitable[None] | None:
        """Transport callback for listener channels and patterns."""
        if self.stopping:
            return None
        return self._admit(functools.partial(self.handle_broadcast, delivery))

    async def handle_broadcast(self, delivery: Delivery) -> None:
        """Decode one broadcast and call its listener."""
        key = delivery.pattern if delivery.pattern is not None else delivery.channel
        listener = self.app.listen_handlers.get(key)
        if listener is None:
            return
        try:
            value = encoding.loads(delivery.data)
        except ValueError:
            logger.warning(
                "dropped a message on %r that is not JSON: %s",
                delivery.channel,
                _preview(delivery.data),
            )
            return
        if flow.isEnabledFor(logging.DEBUG):
            flow.debug("-> %s (listener %s) %s", delivery.channel, key, _preview(delivery.data))

        def build() -> tuple[PubSubRequest, PubSubResponse]:
            request = PubSubRequest.from_broadcast(value, delivery.channel, delivery.pattern)
            response = PubSubResponse(
                self.publisher, request, max_message_size=self.app.max_message_size
            )
            return request, response

        ctx = context.MessageContext(self.app, "pubsub", build=build)
        args: tuple[Any, ...] = (value, delivery.channel)
        if not accepts_arguments(listener, 2):
            args = (value,)
        try:
            if _kind_of(listener) is _ASYNC:  # the common case, without invoke()'s layers
                token = context.push(ctx)
                try:
                    await listener(*args)
                finally:
                    context.pop(token)
            else:
                await self.invoke(listener, ctx, args, ctx.response)
            if ctx.built and ctx.response.sent:
                await ctx.response.flush()
        except Exception:
            logger.exception("listener for %r failed on a message from %r", key, delivery.channel)

    # -- calling user code -----------------------------------------------------------
    async def invoke(
        self,
        func: Callable[..., Any],
        ctx: context.MessageContext,
        args: tuple[Any, ...],
        response: PubSubResponse | None = None,
        executor: WorkerPool | None = None,
        *,
        reply: bool = False,
    ) -> Any:
        """Call a handler with ``ctx`` current: on the loop if async, else in a worker.

        With ``reply``, a worker sends the returned value as the reply itself (when the
        handler sent no final reply): the caller has its answer without waiting for
        the hop back to the loop.
        """
        token = context.push(ctx)
        try:
            kind = _kind_of(func)
            if kind is _ASYNC:
                return await func(*args)
            if kind is _ASYNC_GENERATOR:
                async for part in func(*args):
                    if response is not None:
                        await _maybe_await(response.send(part, final=False))
                return None
            copied = contextvars.copy_context()
            return await (executor or self.executor).run(
                copied.run,
                self._call_sync,
                func,
                args,
                response,
                reply,
            )
        finally:
            context.pop(token)

    def _call_sync(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        response: PubSubResponse | None,
        reply: bool,
    ) -> Any:
        result = func(*args)
        if inspect.isgenerator(result):
            result = self._drive(result, response)
        elif inspect.isawaitable(result):
            # A plain function that returned an awaitable (e.g. a decorator around an
            # async def): finish it on the loop.
            result = asyncio.run_coroutine_threadsafe(_await(result), self.loop).result()
        if (
            reply
            and response is not None
            and not response.final_sent
            and response.request.reply_to is not None
        ):
            # On failure the loop tries again and turns it into an error reply.
            with contextlib.suppress(SerializationError, TransportError):
                response._send(protocol.STATUS_SUCCESS, result, True, detached=True)
        return result

    @staticmethod
    def _drive(generator: Generator[Any, Any, Any], response: PubSubResponse | None) -> Any:
        """Send each part a generator handler yields; return its return value."""
        while True:
            try:
                part = next(generator)
            except StopIteration as stop:
                return stop.value
            if response is not None:
                response.send(part, final=False)

    async def run_hook(self, hook: Callable[..., Any], what: str) -> None:
        """Run a start/stop hook with the app context; failures are logged."""
        try:
            await self.invoke(
                hook, context.MessageContext(self.app), (), executor=self.job_executor
            )
        except Exception:
            logger.exception("%s hook %s failed", what, getattr(hook, "__name__", hook))

    # -- background jobs -------------------------------------------------------------
    def schedule(self, task: BackgroundTask) -> None:
        """Start (or restart) the schedule of a background job."""
        old = self.schedules.pop(task.name, None)
        if old is not None:
            old.cancel()
        self.schedules[task.name] = self.loop.create_task(
            self._run_schedule(task), name=f"daebus-job {task.name}"
        )

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
                        await asyncio.wait_for(changed.wait(), delay)
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
            await self.invoke(
                task.func, context.MessageContext(self.app), (), executor=self.job_executor
            )
        except Exception:
            logger.exception("background task %r failed", task.name)
        else:
            logger.debug("background task %r ran in %.3fs", task.name, time.monotonic() - started)

    # -- stop ------------------------------------------------------------------------
    async def shutdown(self, timeout: float) -> None:
        """Stop taking messages, drain in-flight work, stop jobs and threads, close."""
        self.stopping = True
        deadline = self.loop.time() + timeout
        for subscription in list(self.subscriptions.values()):
            try:
                await subscription.unsubscribe()
            except Exception as exc:
                logger.debug("unsubscribe %s failed: %s", subscription.name, exc)
        self.subscriptions.clear()
        for schedule in self.schedules.values():
            schedule.cancel()
        pending = set(self.in_flight) | set(self.schedules.values())
        if pending:
            logger.info("waiting for %d in-flight handler(s) to finish", len(self.in_flight))
            _done, still = await asyncio.wait(
                pending, timeout=max(0.0, deadline - self.loop.time())
            )
            if still:
                logger.warning(
                    "%d handler(s) still running after %.1fs; abandoning them", len(still), timeout
                )
                for task in still:
                    task.cancel()
        await self.loop.run_in_executor(
            None, self.app._join_threads, max(0.1, deadline - self.loop.time())
        )
        for hook in list(self.app._on_stop_handlers):
            await self.run_hook(hook, "stop")
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.job_executor.shutdown(wait=False, cancel_futures=True)


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value
