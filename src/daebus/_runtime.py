"""The running state of a service: its loop, transport, worker pool and dispatch.

One :class:`ServiceRuntime` exists per ``serve()``. Messages come off the transport on
the event loop. Each request is handled in its own task; broadcasts that arrive together
share one, each in its own context, until one of them waits (see
:meth:`ServiceRuntime.handle_broadcasts`). ``async def`` handlers run on the loop, plain
``def`` handlers in the worker pool.

At most ``max_in_flight`` messages are handled at once; later ones wait in a bounded
queue (``max_queued`` requests, and ``max_queued_bytes`` of requests and broadcasts in
all). Past that a request is refused at once with a busy error reply and a broadcast is
dropped, with a warning. The service never stops reading its socket: if it did, the
queue would grow in the Redis server instead, which drops a subscriber past its
output-buffer limit and everything queued for it with it, without telling anyone.
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
import types
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, TypeVar

from . import context, encoding, protocol
from ._compat import timeout as deadline
from ._inbox import LoopInbox
from ._throttle import LogThrottle
from ._workers import WorkerPool
from .exceptions import SerializationError, TransportError
from .protocol import shorten
from .pubsub import PubSubRequest, PubSubResponse
from .scheduler import BackgroundTask, accepts_arguments
from .transport import Delivery, Subscription, Transport
from .transport._url import redact_url

if TYPE_CHECKING:
    from .app import Daebus

T = TypeVar("T")

logger = logging.getLogger("daebus.runtime")
flow = logging.getLogger("daebus.flow")

_PREVIEW = protocol.FIELD_LIMIT
#: Error texts (a handler's exception) are longer than fields, but still bounded.
_TEXT_LIMIT = 2000
#: What a waiting message is counted as beyond its bytes (its objects in memory).
_QUEUED_OVERHEAD = 100


def _preview(data: bytes) -> str:
    """The start of a message, for a log line (escaped: it may be anything)."""
    text = shorten(data[:_PREVIEW].decode("utf-8", "replace"))
    return text + (f"... ({len(data)} bytes)" if len(data) > _PREVIEW else "")


def _is_short_id(request_id: Any) -> bool:
    """Whether a request id can be echoed: None, a short string, a number."""
    kind = type(request_id)
    if kind is str:
        return len(request_id) <= protocol.FIELD_LIMIT
    if kind is int:
        return bool(-(1 << 64) < request_id < 1 << 64)
    return request_id is None or kind is float or kind is bool


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
        """The task, started eagerly as 3.12 would, where the loop allows it.

        A new task's first step is the handle just queued on the loop's ready queue;
        it is taken off and run now, with the task current and in its own context, as
        ``eager_start`` does. A handler that never waits then costs no second turn of
        the loop: 5-10 us per message on Python 3.11 (bench/README.md). Any other loop
        (no ``_ready``), a task factory that queues something else, or a caller inside
        a task gets a plain task.
        """
        if loop.get_task_factory() is None:
            task = asyncio.Task(coroutine, loop=loop)  # what create_task does then
        else:
            task = loop.create_task(coroutine)
        ready = getattr(loop, "_ready", None)
        if ready and asyncio.current_task(loop) is None:
            step = ready[-1]
            if getattr(step._callback, "__self__", None) is task:
                ready.pop()
                step._run()
        return task


_ASYNC, _ASYNC_GENERATOR, _SYNC = "async", "async generator", "sync"


def _inspect_kind(func: Callable[..., Any]) -> str:
    if inspect.isasyncgenfunction(func):
        return _ASYNC_GENERATOR
    return _ASYNC if is_async_callable(func) else _SYNC


def _inspect_takes_channel(func: Callable[..., Any]) -> bool:
    return accepts_arguments(func, 2)


# What is learnt by inspecting a handler (microseconds each time), per handler.
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


def _kind_of(func: Callable[..., Any]) -> str:
    """How a handler is called: ``_ASYNC``, ``_ASYNC_GENERATOR`` or ``_SYNC``."""
    return _remember(_inspect_kind, func)


def _inspect_listener(listener: Callable[..., Any]) -> tuple[str, bool]:
    """How a listener is called, and whether as ``(data, channel)`` rather than ``(data)``."""
    return _kind_of(listener), _inspect_takes_channel(listener)


class HandlerExitError(Exception):
    """A handler raised ``SystemExit`` (or another non-``Exception``): a plain failure here."""

    def __str__(self) -> str:
        return _error_text(self.args[0])


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
            future.add_done_callback(functools.partial(_report_failure, runtime.throttle, channel))
            return future
        return runtime.transport.publish_blocking(channel, data)

    def publish_detached(self, channel: str, data: bytes) -> None:
        """Publish without waiting for the receiver count (a worker's final reply).

        Alone, a worker sends it at once on its thread's connection. While other
        ``def`` actions run, it hands it to the loop instead, which writes the replies
        of every worker in one go: one system call and one read by the server for many.
        Whatever the worker published before on its own connection has been answered
        by then, so the parts of a stream still arrive before their final reply.
        """
        runtime = self._runtime
        if threading.get_ident() == runtime.loop_thread:
            self.publish(channel, data)
            return
        if runtime.jobs > 1:
            try:
                runtime.inbox.call_soon(self._publish_handed_over, channel, data)
                return
            except RuntimeError:  # the loop is closed: send it from here
                pass
        runtime.transport.publish_detached(channel, data)

    def nowhere(self) -> Any:
        """What a reply to no channel gives: no receivers (a future of 0 on the loop)."""
        runtime = self._runtime
        if threading.get_ident() == runtime.loop_thread:
            future: asyncio.Future[int] = runtime.loop.create_future()
            future.set_result(0)
            return future
        return 0

    def _publish_handed_over(self, channel: str, data: bytes) -> None:
        runtime = self._runtime
        runtime.transport.publish_then(
            channel, data, functools.partial(_log_if_failed, runtime.throttle, channel)
        )


def _report_failure(throttle: LogThrottle, channel: str, future: asyncio.Future[int]) -> None:
    if not future.cancelled() and future.exception() is not None:
        _log_if_failed(throttle, channel, future.exception())


def _log_if_failed(throttle: LogThrottle, channel: str, outcome: Any) -> None:
    if isinstance(outcome, BaseException):
        # Every publish fails alike while the server is away: one line per period.
        throttle.log(
            logging.WARNING, "publish", "publish to %r failed: %s", shorten(channel), outcome
        )


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
        self.inbox = LoopInbox(self.loop)
        # Jobs and hooks get their own threads, so a busy worker pool cannot starve them.
        self.job_executor = WorkerPool(self.loop, 8, f"daebus_{service}_job")
        self.capacity = app.max_in_flight
        self.tasks = 0
        self._jobs_started = 0
        self._jobs_finished = 0
        self._lock = threading.Lock()
        self._idle_waiters: list[asyncio.Future[None]] = []
        self.in_flight: set[asyncio.Task[Any]] = set()
        # What waits for a slot is kept apart, in slots: from 30 attributes on, an
        # instance loses CPython's fast attribute access, which every message pays for.
        # Requests wait in backlog.requests, broadcasts in _broadcasts.
        self.backlog = _Backlog(app)
        # True while messages wait for a slot and nothing is yet due to start them:
        # whoever frees a slot then calls _admit_waiting on the loop. Set on the loop,
        # under _lock.
        self._waiting_for_slot = False
        self.replies = protocol.ReplyChannels(service, app.reply_channels)
        self.throttle = LogThrottle(logger, self.loop)
        # Broadcasts read and not started yet, oldest first: the task of their batch
        # starts each as a slot allows (it is then counted in ``tasks``).
        self._broadcasts: deque[Delivery] = deque()
        self._draining = False  # a task will still take from _broadcasts
        self._batched = transport.ends_batches  # else each broadcast is started at once
        # Channel or pattern -> (listener, kind, takes_channel): a listener is inspected
        # once, and again only if another function replaces it in listen_handlers.
        self._listeners: dict[str, tuple[Callable[..., Any], str, bool]] = {}
        # Whether daebus.flow logs each broadcast: asked once per batch, not per message.
        self._flow_debug = False
        self.subscriptions: dict[tuple[str, str], Subscription] = {}
        self.schedules: dict[str, asyncio.Task[None]] = {}
        # The loop only keeps weak references to tasks: hold on to fire-and-forget ones.
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self.stopping = False

    # -- start -----------------------------------------------------------------------
    async def start(self) -> None:
        """Subscribe everything, start jobs and threads, then run the start hooks."""
        app = self.app
        self.transport.add_batch_end(self.start_broadcasts)
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
            redact_url(self.transport.url),
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
            # Before the first message can arrive: replies never go where we listen.
            listened = [n for k, n in self.subscriptions if k == "listener"] + [name]
            self.replies.listening_on(
                [n for n in listened if not protocol.is_pattern(n)],
                [n for n in listened if protocol.is_pattern(n)],
            )
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

    # -- admission (bounded queue, load shedding) -------------------------------------
    # A message holds a slot while it is handled: as a task on the loop (``tasks``,
    # counted on the loop alone) or as a ``def`` action in a worker (started on the loop,
    # finished by the workers under ``_lock``). With every slot taken, messages wait in
    # ``backlog.requests`` and ``_broadcasts``, in the order they came, and start as
    # slots free up.
    @property
    def jobs(self) -> int:
        """``def`` actions running (or queued) in the workers."""
        return self._jobs_started - self._jobs_finished

    @property
    def active(self) -> int:
        """Messages being handled: the slots in use."""
        return self.tasks + self._jobs_started - self._jobs_finished

    @property
    def queued(self) -> int:
        """Messages read and waiting for a slot (requests and broadcasts)."""
        return len(self.backlog.requests) + len(self._broadcasts)

    def _wait_for_slot(self) -> bool:
        """Every slot is taken: have whoever frees one call :meth:`_admit_waiting`.

        False if one was freed meanwhile (by a worker): the caller may go on.
        """
        with self._lock:  # a worker finishing now sees the flag, or we see its slot
            if self.tasks + self._jobs_started - self._jobs_finished < self.capacity:
                return False
            self._waiting_for_slot = True
            return True

    def _hold(self, kind: str, delivery: Delivery) -> None:
        """Queue a request that cannot start now; refuse it if the queue is full."""
        if self.stopping:
            self._refuse_unrun(delivery, stopping=True)
            return
        backlog, size = self.backlog, len(delivery.data) + _QUEUED_OVERHEAD
        waiting = backlog.requests
        # One message alone may be larger than the bytes' bound: it is refused as such.
        if len(waiting) >= backlog.max_requests or (
            waiting and backlog.bytes + size > backlog.max_bytes
        ):
            self._refuse_unrun(delivery, stopping=False)
            return
        backlog.bytes += size
        waiting.append((kind, delivery))
        if not self._waiting_for_slot:
            self._admit_waiting()

    def _admit_waiting(self) -> None:
        """Start waiting requests, oldest first, then broadcasts, while slots are free."""
        waiting = self.backlog.requests
        while waiting and not self.stopping:
            if self.tasks + self._jobs_started - self._jobs_finished >= self.capacity:
                if self._wait_for_slot():
                    return
                continue
            kind, delivery = waiting.popleft()
            self.backlog.bytes -= len(delivery.data) + _QUEUED_OVERHEAD
            self._start_request(kind, delivery)
        self.start_broadcasts()

    def _refuse_waiting(self) -> None:
        """Stopping: refuse every waiting request (busy reply), drop waiting broadcasts."""
        backlog = self.backlog
        waiting = list(backlog.requests)
        backlog.requests.clear()
        backlog.dropped_at_stop += len(self._broadcasts)
        self._broadcasts.clear()
        backlog.bytes = 0
        for _kind, delivery in waiting:
            self._refuse_unrun(delivery, stopping=True)

    def _refuse_unrun(self, delivery: Delivery, *, stopping: bool) -> None:
        """Answer a request that will not run with a busy error reply, if it can be answered."""
        if stopping:
            self.backlog.refused_at_stop += 1
            text = f"service {self.service!r} is stopping; the request was not run, try again"
        else:
            waiting = len(self.backlog.requests)
            text = (
                f"service {self.service!r} is busy ({waiting} requests waiting); "
                "the request was not run, try again later"
            )
            self.throttle.log(
                logging.WARNING,
                "busy",
                "refused a request unrun on %r: %d handled at once and %d waiting (the limits)",
                shorten(delivery.channel),
                self.capacity,
                waiting,
            )
        try:
            message = protocol.decode_object(delivery.data)
        except protocol.BadMessageError:
            return  # not a request: it would have been dropped anyway
        # Not PubSubRequest(message): that would decode a string payload too.
        fields = ("reply_to", "request_id", "service")
        request = PubSubRequest({field: message.get(field) for field in fields})
        if not self._addressable(request, delivery.channel) or request.reply_to is None:
            return
        data = protocol.encode_reply(
            protocol.STATUS_ERROR, protocol.busy_payload(text), request.request_id, True
        )
        try:
            self.publisher.publish(request.reply_to, data)
        except TransportError as exc:  # the transport is closing under us
            logger.debug("could not refuse a request: %s", exc)

    def _drop_broadcast(self, delivery: Delivery) -> None:
        if self.stopping:
            self.backlog.dropped_at_stop += 1
            return
        key = delivery.pattern if delivery.pattern is not None else delivery.channel
        self.throttle.log(
            logging.WARNING,
            f"dropped {key}",
            "listeners fell behind: dropped a message on %r (%d broadcasts waiting, "
            "max_queued_bytes reached)",
            shorten(delivery.channel),
            len(self._broadcasts),
        )

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Handle a message in a task; ``work`` ends with :meth:`_task_done`."""
        # The task starts eagerly: the message's handler runs at once, up to its first
        # real wait, and one that never waits (an async action whose reply is only
        # queued, a batch of listeners that do not wait) costs no extra turn of the loop.
        self.tasks += 1
        self._track(_new_task(self.loop, work))

    def _track(self, task: asyncio.Task[Any]) -> None:
        if not task.done():  # it waits for something: one more turn of the loop is nothing
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)

    def _task_done(self) -> None:
        # Called by the message's own task as it ends: a done callback would cost one
        # more turn of the loop for every message, even one handled at once.
        self.tasks -= 1
        if self._waiting_for_slot:
            self._waiting_for_slot = False
            # Not started from here: this task is ending, and starting the next message
            # inside it would nest one in another as long as the queue.
            self.loop.call_soon(self._admit_waiting, context=self.backlog.reader_context)

    def _job_done(self) -> None:
        """In a worker: a ``def`` action ended; wake the loop only if it waits for that."""
        with self._lock:
            self._jobs_finished += 1
            wake_admission, self._waiting_for_slot = self._waiting_for_slot, False
            idle_waiters: list[asyncio.Future[None]] = []
            if self._jobs_started == self._jobs_finished and self._idle_waiters:
                idle_waiters, self._idle_waiters = self._idle_waiters, []
        try:
            if wake_admission:
                self.loop.call_soon_threadsafe(
                    self._admit_waiting, context=self.backlog.reader_context
                )
            if idle_waiters:
                self.loop.call_soon_threadsafe(_resolve_all, idle_waiters)
        except RuntimeError:  # the loop is closed: the service has stopped
            pass

    @property
    def busy(self) -> int:
        """How many messages are being handled (tasks and ``def`` actions)."""
        return len(self.in_flight) + self.jobs

    async def settle(self) -> None:
        """Wait until no message is handled or waits, including ``def`` actions in workers."""
        while self.in_flight or self.jobs or self.backlog.requests or self._broadcasts:
            if self.in_flight:
                await asyncio.wait(set(self.in_flight))
            elif self.jobs:
                await self._jobs_done()
            else:  # free slots: their start is due on the loop
                await asyncio.sleep(0)

    async def _jobs_done(self) -> None:
        """Wait until no ``def`` action is running in the workers."""
        while True:
            with self._lock:
                if not self.jobs:
                    return
                waiter = self.loop.create_future()
                self._idle_waiters.append(waiter)
            await waiter

    # -- requests --------------------------------------------------------------------
    def on_request(self, kind: str, delivery: Delivery) -> None:
        """Transport callback for the service (and workflow) channel.

        Starts the request, or queues it behind ``max_in_flight``; past ``max_queued``
        it is refused at once with a busy error reply. Never returns an awaitable: the
        transport keeps reading (see the module's docstring).
        """
        if (
            self.backlog.requests
            or self.stopping
            or self.tasks + self._jobs_started - self._jobs_finished >= self.capacity
        ):
            self._hold(kind, delivery)
            return
        self._start_request(kind, delivery)

    def _start_request(self, kind: str, delivery: Delivery) -> None:
        """Check one request on the loop, then start its handler (or refuse it).

        A plain ``def`` action goes to a worker as one job, which calls it, replies
        and frees the slot: no task, no future, no wake-up of the loop afterwards.
        Anything else gets a task on the loop.
        """
        try:
            accepted = self._accept_request(kind, delivery)
        except Exception:  # a bug of ours must not stop the reader
            logger.exception("could not dispatch a message on %r", shorten(delivery.channel))
            return
        if accepted is None:
            return
        name, handler, ctx = accepted
        if _kind_of(handler) is _SYNC:
            self._jobs_started += 1
            try:
                self.executor.call(
                    contextvars.copy_context().run, self._run_sync_action, name, handler, ctx
                )
            except RuntimeError:  # the pool is shut down: the service is stopping
                self._job_done()
                logger.warning("dropped a request for %r: the service is stopping", name)
        else:
            self._spawn(self._run_action(name, handler, ctx))

    def _accept_request(
        self, kind: str, delivery: Delivery
    ) -> tuple[str, Callable[..., Any], context.MessageContext] | None:
        """Decode and validate a request; refuse (or drop) it and return None if bad.

        A request is not run when it cannot be answered where it asks: its ``reply_to``
        is not a reply channel (:class:`~daebus.protocol.ReplyChannels`), or its
        ``request_id`` is not a short string or a number. Such requests are dropped,
        with a warning at most every few seconds.
        """
        try:
            message = protocol.decode_object(delivery.data)
        except protocol.BadMessageError as exc:
            self._refuse_malformed(delivery, exc)
            return None
        request = PubSubRequest(message)
        request.channel = delivery.channel
        if not self._addressable(request, delivery.channel):
            return None
        response = PubSubResponse(
            self.publisher, request, max_message_size=self.app.max_message_size
        )
        table = self.app.action_handlers if kind == "request" else self.app.workflow_handlers
        name = message.get("action") if kind == "request" else message.get("workflow")
        if name is None and kind == "workflow":
            name = message.get("action")
        if flow.isEnabledFor(logging.DEBUG):
            flow.debug(
                "-> %s %s request_id=%s reply_to=%s payload=%s",
                shorten(delivery.channel),
                shorten(name),
                request.request_id,
                request.reply_to,
                _preview(delivery.data),
            )
        if len(delivery.data) > self.app.max_message_size:
            self._refuse(
                response,
                f"request of {len(delivery.data)} bytes is over the "
                f"{self.app.max_message_size}-byte limit",
                kind="too large",
            )
            return None
        if not name:
            self._refuse(response, "request has no action", kind="no action")
            return None
        if not isinstance(name, str):
            self._refuse(
                response, f"action must be a string, not {type(name).__name__}", kind="no action"
            )
            return None
        handler = table.get(name)
        if handler is None:
            self._refuse(
                response,
                f"Unknown action '{shorten(name)}' for service '{self.service}'",
                kind="unknown action",
            )
            return None
        return name, handler, context.MessageContext(self.app, "pubsub", request, response)

    def _addressable(self, request: PubSubRequest, channel: str) -> bool:
        """Whether a request can be answered where it asks; sets where replies go.

        Without ``reply_to``, replies a handler sends go to ``<service>.responses`` if
        that is a reply channel, else nowhere.
        """
        reply_to = request.reply_to
        if reply_to is None:
            request.reply_channel = self.replies.fallback(request.service)
        else:
            refusal = self.replies.refusal(reply_to)
            if refusal is not None:
                self.throttle.log(
                    logging.WARNING,
                    "reply_to",
                    "dropped a request on %r unrun: its reply_to %s is %s",
                    shorten(channel),
                    shorten(reply_to),
                    refusal,
                )
                return False
        if not _is_short_id(request.request_id):
            self.throttle.log(
                logging.WARNING,
                "request_id",
                "dropped a request on %r unrun: its request_id is not a string of at most "
                "%d characters or a number: %s",
                shorten(channel),
                protocol.FIELD_LIMIT,
                shorten(request.request_id),
            )
            return False
        return True

    def _refuse_malformed(self, delivery: Delivery, exc: protocol.BadMessageError) -> None:
        """Answer bytes that are not a JSON object, if a reply address can be read in them."""
        address = protocol.recover_reply_address(delivery.data)
        if address is None:
            self.throttle.log(
                logging.WARNING,
                "not a request",
                "dropped a message on %r that cannot be answered (%s): %s",
                shorten(delivery.channel),
                shorten(str(exc)),
                _preview(delivery.data),
            )
            return
        reply_to, request_id = address
        malformed = PubSubRequest({"reply_to": reply_to, "request_id": request_id})
        if self._addressable(malformed, delivery.channel):
            self._refuse(
                PubSubResponse(self.publisher, malformed),
                f"malformed request: {shorten(str(exc))}",
                kind="malformed",
            )

    async def _run_action(
        self, name: str, handler: Callable[..., Any], ctx: context.MessageContext
    ) -> None:
        """An ``async def`` (or async generator) action on the loop; failures are answered."""
        response = ctx.response
        try:
            result = await self.invoke(handler, ctx, (), response)
            with contextlib.suppress(TransportError):  # logged by the publisher, as below
                await response.flush()
            if not response.final_sent and response.request.reply_to is not None:
                try:
                    count = response.send(result)
                except SerializationError as exc:
                    await _settled(
                        self._refuse(response, f"could not encode the reply: {exc}", kind="encode")
                    )
                    return
                if asyncio.isfuture(count):
                    # A reply the server did not take is the publisher's to log (once a
                    # period); the handler itself did not fail.
                    with contextlib.suppress(TransportError):
                        await count
        except asyncio.CancelledError:
            if self.stopping and not response.final_sent:
                # Abandoned at shutdown: say so rather than leave the caller to time out.
                self._refuse(
                    response,
                    f"service {self.service!r} stopped before the request finished",
                    kind="stopped",
                )
            raise
        except Exception as exc:
            self._log_failure(name, exc)
            if not response.final_sent:
                await _settled(self._refuse(response, _error_text(exc), log=False))
        finally:
            self._task_done()

    def _run_sync_action(
        self, name: str, handler: Callable[..., Any], ctx: context.MessageContext
    ) -> None:
        """A plain ``def`` action, start to end in a worker: call, reply, free the slot."""
        response = ctx.response
        token = context.push(ctx)
        try:
            try:
                result = self._call_sync(handler, (), response)
            except BaseException as exc:  # SystemExit too: one handler must not stop the service
                self._log_failure(name, exc)
                if not response.final_sent:
                    self._refuse(response, _error_text(exc), log=False)
                return
            if response.final_sent or response.request.reply_to is None:
                return
            try:
                response._send(protocol.STATUS_SUCCESS, result, True, detached=True)
            except SerializationError as exc:
                self._refuse(response, f"could not encode the reply: {exc}", kind="encode")
            except TransportError as exc:
                self.throttle.log(
                    logging.ERROR,
                    "reply failed",
                    "could not reply to %s: %s",
                    response.request.reply_to,
                    exc,
                )
        finally:
            context.pop(token)
            self._job_done()

    def _log_failure(self, name: str, exc: BaseException) -> None:
        """Log a failed action with its traceback, once a period per action."""
        self.throttle.log(
            logging.ERROR,
            f"action {name}",
            "action %r of %r failed",
            shorten(name),
            self.service,
            exc_info=exc,
        )

    def _refuse(
        self, response: PubSubResponse, message: str, *, log: bool = True, kind: str = "refused"
    ) -> Any:
        """Answer with an error reply if the request has a ``reply_to``; log otherwise.

        On the loop this returns the publish's future (its failure is logged by the
        publisher); elsewhere the reply has gone out when it returns. Lines of one
        ``kind`` are logged at most once a period.
        """
        request = response.request
        message = shorten(message, _TEXT_LIMIT)
        if log:
            self.throttle.log(
                logging.WARNING,
                kind,
                "%s (request_id=%s)",
                message,
                shorten(request.request_id),
            )
        if request.reply_to is None:
            return None
        try:
            return response.error(message)
        except (TransportError, SerializationError) as exc:
            self.throttle.log(
                logging.ERROR,
                "reply failed",
                "could not send the error reply to %s: %s",
                request.reply_to,
                exc,
            )
            return None

    # -- broadcasts ------------------------------------------------------------------
    def on_broadcast(self, delivery: Delivery) -> None:
        """Transport callback for listener channels and patterns: queue it for its batch.

        The transport calls :meth:`start_broadcasts` at the batch's end (if it
        :attr:`~daebus.transport.Transport.ends_batches`; else it is called here), and
        the queued broadcasts start as slots allow. When the queue holds
        ``max_queued_bytes``, listeners have fallen behind: the broadcast is dropped,
        with a warning that counts the drops per channel. Never returns an awaitable:
        the transport keeps reading (see the module's docstring).
        """
        backlog, queue = self.backlog, self._broadcasts
        queued = backlog.bytes + len(delivery.data) + _QUEUED_OVERHEAD
        if queued > backlog.max_bytes and queue:  # max_bytes is 0 once stopping
            self._drop_broadcast(delivery)
            return
        backlog.bytes = queued
        queue.append(delivery)
        if not self._batched:
            self.start_broadcasts()

    def start_broadcasts(self) -> None:
        """Handle the queued broadcasts in a task, unless one is taking them already."""
        if self._broadcasts and not self._draining:
            self._draining = True
            self._track(_new_task(self.loop, self.handle_broadcasts()))

    def _hand_over(self) -> None:
        """The current task takes no more broadcasts: a new one takes those queued.

        A plain task, not an eager one: started inside this task, an eager one would
        run its first step nested in this one's, and a run of messages that each wait
        would nest as deep as the queue is long.
        """
        self._draining = bool(self._broadcasts)
        if self._draining:
            self._track(self.loop.create_task(self.handle_broadcasts()))

    async def handle_broadcasts(self) -> None:
        """Handle the queued broadcasts in order, in this task, until one waits.

        A task of its own for each message would cost a quarter of a listener's CPU
        per message on Python 3.11 (bench/README.md). Each message still gets what its
        own task would give it: a context of its own, and a task that is running it from
        start to end, so ``asyncio.current_task()``, ``asyncio.timeout()`` and
        cancellation work in a listener. To keep that true, the first message that waits
        is seen through by this task, and a new task takes the rest of the queue.
        """
        queue = self._broadcasts
        self._flow_debug = flow.isEnabledFor(logging.DEBUG)
        while queue:
            # self.active < self.capacity without the property's call: this runs for
            # every broadcast.
            if self.tasks + self._jobs_started - self._jobs_finished >= self.capacity:
                if self._wait_for_slot():
                    self._draining = False
                    return
                continue
            delivery = queue.popleft()
            self.backlog.bytes -= len(delivery.data) + _QUEUED_OVERHEAD
            self.tasks += 1  # handle_broadcast() ends with _task_done()
            work = self.handle_broadcast(delivery)
            own = contextvars.copy_context()
            try:
                waiting_on = own.run(work.send, None)
            except StopIteration:
                continue
            except BaseException:  # CancelledError or KeyboardInterrupt: as from its own task
                self._hand_over()
                raise
            self._hand_over()
            await _carry_on(own, work, waiting_on)
            return
        self._draining = False

    async def handle_broadcast(self, delivery: Delivery) -> None:
        """Decode one broadcast and call its listener; ends with :meth:`_task_done`."""
        try:
            found = self._listener_for(delivery)
            if found is None:
                return
            (listener, kind, takes_channel), value = found
            ctx = _BroadcastContext(self.app, self.publisher, delivery, value)
            try:
                if kind is _ASYNC:  # the common case, without invoke()'s layers
                    token = context.push(ctx)
                    try:
                        if takes_channel:
                            await listener(value, delivery.channel)
                        else:
                            await listener(value)
                    finally:
                        context.pop(token)
                else:
                    args = (value, delivery.channel) if takes_channel else (value,)
                    await self.invoke(listener, ctx, args, ctx.response)
                if ctx.built and ctx.response.sent:
                    await ctx.response.flush()
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except BaseException as exc:  # SystemExit too: one listener must not stop the service
                key = delivery.pattern or delivery.channel
                self.throttle.log(
                    logging.ERROR,
                    f"listener {key}",
                    "listener for %r failed on a message from %r",
                    shorten(key),
                    shorten(delivery.channel),
                    exc_info=exc,
                )
        finally:
            self._task_done()

    def _listener_for(
        self, delivery: Delivery
    ) -> tuple[tuple[Callable[..., Any], str, bool], Any] | None:
        """A broadcast's ``(listener, kind, takes_channel)`` and its decoded value.

        None if there is nothing to do.
        """
        key = delivery.pattern if delivery.pattern is not None else delivery.channel
        listener = self.app.listen_handlers.get(key)
        if listener is None:
            return None
        shape = self._listeners.get(key)
        if shape is None or shape[0] is not listener:
            shape = self._listeners[key] = (listener, *_inspect_listener(listener))
        try:
            value = encoding.loads(delivery.data)
        except ValueError:
            self.throttle.log(
                logging.WARNING,
                f"not JSON {key}",
                "dropped a message on %r that is not JSON: %s",
                shorten(delivery.channel),
                _preview(delivery.data),
            )
            return None
        if self._flow_debug:
            flow.debug(
                "-> %s (listener %s) %s", shorten(delivery.channel), key, _preview(delivery.data)
            )
        return shape, value

    # -- calling user code -----------------------------------------------------------
    async def invoke(
        self,
        func: Callable[..., Any],
        ctx: context.MessageContext,
        args: tuple[Any, ...],
        response: PubSubResponse | None = None,
        executor: WorkerPool | None = None,
    ) -> Any:
        """Call a handler with ``ctx`` current: on the loop if async, else in a worker."""
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
                copied.run, self._call_sync, func, args, response
            )
        except (asyncio.CancelledError, KeyboardInterrupt, Exception):
            raise
        except BaseException as exc:
            # SystemExit and the like: a task raising one would stop the whole loop.
            raise HandlerExitError(exc) from exc
        finally:
            context.pop(token)

    def _call_sync(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        response: PubSubResponse | None,
    ) -> Any:
        result = func(*args)
        if inspect.isgenerator(result):
            result = self._drive(result, response)
        elif inspect.isawaitable(result):
            # A plain function that returned an awaitable (e.g. a decorator around an
            # async def): finish it on the loop.
            result = asyncio.run_coroutine_threadsafe(_await(result), self.loop).result()
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
                        async with deadline(delay):
                            await changed.wait()
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
        """Stop taking messages, drain in-flight work, stop jobs and threads, close.

        Every request read gets an answer: those being handled finish (within
        ``timeout``), those still waiting for a slot, or read while unsubscribing, get a
        busy error reply at once ("stopping"; callers raise ``ServiceBusyError``).
        Waiting broadcasts are dropped. The log says how many of each.
        """
        self.stopping = True
        self.backlog.max_bytes = 0
        deadline = self.loop.time() + timeout
        self._refuse_waiting()
        for subscription in list(self.subscriptions.values()):
            try:
                await subscription.unsubscribe()
            except Exception as exc:
                logger.debug("unsubscribe %s failed: %s", subscription.name, exc)
        self.subscriptions.clear()
        if self.backlog.refused_at_stop or self.backlog.dropped_at_stop:
            logger.warning(
                "stopping: refused %d request(s) unrun and dropped %d broadcast(s) that "
                "had not started",
                self.backlog.refused_at_stop,
                self.backlog.dropped_at_stop,
            )
        for schedule in self.schedules.values():
            schedule.cancel()
        if self.jobs:
            # Waited for like a task; a second signal cancels the wait with the tasks.
            waiter = self.loop.create_task(self._jobs_done())
            self.in_flight.add(waiter)
            waiter.add_done_callback(self.in_flight.discard)
        pending = set(self.in_flight) | set(self.schedules.values())
        if pending:
            logger.info("waiting for %d in-flight handler(s) to finish", self.busy)
            _done, still = await asyncio.wait(
                pending, timeout=max(0.0, deadline - self.loop.time())
            )
            if still:
                logger.warning(
                    "%d handler(s) still running after %.1fs; abandoning them", self.busy, timeout
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
        self.transport.remove_batch_end(self.start_broadcasts)
        self.throttle.flush()


class _Backlog:
    """What waits for a slot, and its bounds (see :class:`~daebus.Daebus`'s settings)."""

    __slots__ = (
        "bytes",
        "dropped_at_stop",
        "max_bytes",
        "max_requests",
        "reader_context",
        "refused_at_stop",
        "requests",
    )

    def __init__(self, app: Daebus) -> None:
        #: Requests read while every slot was taken, oldest first: (kind, delivery).
        self.requests: deque[tuple[str, Delivery]] = deque()
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


def _resolve_all(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


async def _settled(sent: Any) -> None:
    """Wait for a publish's future, if any; its failure was logged by the publisher."""
    if asyncio.isfuture(sent):
        with contextlib.suppress(Exception):
            await sent


class _BroadcastContext(context.MessageContext):
    """A listener's context, whose request and response are made on first use.

    Most listeners never read them. Made for every broadcast, so it sets its fields
    itself: calling ``MessageContext.__init__`` too costs 1.6k more instructions per
    message, of 30k in all (bench/callgrind_listener.py).
    """

    __slots__ = ("_delivery", "_publisher", "_value")

    def __init__(self, app: Daebus, publisher: Publisher, delivery: Delivery, value: Any) -> None:
        self.app = app
        self.kind = "pubsub"
        self.built = False
        self._publisher = publisher
        self._delivery = delivery
        self._value = value

    def _parts(self) -> tuple[PubSubRequest, PubSubResponse]:
        delivery = self._delivery
        request = PubSubRequest.from_broadcast(self._value, delivery.channel, delivery.pattern)
        # A listener's reply goes to the message's reply_to only if that is a reply
        # channel (ReplyChannels); else nowhere.
        replies = self._publisher._runtime.replies
        reply_to = request.reply_to
        if reply_to is None:
            request.reply_channel = replies.fallback(request.service)
        elif replies.refusal(reply_to) is not None:
            request.reply_channel = None
        response = PubSubResponse(
            self._publisher, request, max_message_size=self.app.max_message_size
        )
        return request, response


@types.coroutine
def _carry_on(
    own: contextvars.Context, work: Coroutine[Any, None, None], waiting_on: Any
) -> Generator[Any, Any, None]:
    """Finish ``work``, a coroutine stepped by hand that now waits on ``waiting_on``.

    What ``await work`` would do from here, with each step run in ``own``: the context
    the coroutine started in.
    """
    while True:
        try:
            sent = yield waiting_on
        except BaseException as exc:  # cancellation, thrown in by the task; GeneratorExit
            step: Callable[[Any], Any] = work.throw
            value: Any = exc
        else:
            step, value = work.send, sent
        try:
            waiting_on = own.run(step, value)
        except StopIteration:
            return


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value
