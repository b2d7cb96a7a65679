"""Broadcasts: listener batches, each message in a context of its own.

Broadcasts are queued as they are read and started as slots allow, in a task that
takes them in order: broadcasts that arrive together share that task, until one of
them waits (see :meth:`Broadcasts.handle_queued`). When ``max_queued_bytes`` of
messages wait, listeners have fallen behind and a broadcast is dropped, with a
warning counted per channel.

Each listener of a channel gets each message, in a context (and, with several, a
task) of its own. An ordered listener (``listen(..., ordered=True)``) takes its
messages one at a time: those that come while it is busy wait in its
:class:`Backlog`, counted with the messages waiting for a slot.

A shared listener (``listen(..., shared=True)``) gets only the messages this instance
wins among those of its service (:mod:`.shared_listeners`): they are claimed as they
are read, and each one won is queued then, for that listener alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeAlias

from .. import context, encoding
from ..protocol import ReplyChannels, shorten
from ..pubsub import PubSubRequest, PubSubResponse
from .admission import QUEUED_OVERHEAD
from .eager import finish, first_step, start_task
from .invoke import ASYNC, accepts_arguments, kind_of
from .requests import preview
from .shared_listeners import ForListeners, SharedListeners

if TYPE_CHECKING:
    from .._registry import Listener
    from ..app import Daebus
    from ..transport import Delivery
    from . import ServiceRuntime
    from .publisher import Publisher

__all__ = ["Backlog", "Broadcasts"]

flow = logging.getLogger("daebus.flow")


class Backlog:
    """An ordered listener's backlog: whether it is handling a message, and those waiting."""

    __slots__ = ("busy", "listener", "waiting")

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.busy = False
        self.waiting: deque[tuple[Delivery, Any]] = deque()


#: A listener as it is called: (function, kind, takes_channel).
_Shape: TypeAlias = "tuple[Callable[..., Any], str, bool]"
#: The same, with the listener's Backlog if it is ordered.
_Call: TypeAlias = "tuple[Callable[..., Any], str, bool, Backlog | None]"
#: A channel's listeners as registered, as called, and the shape of its one unordered
#: listener when it is alone (the common case, called inline).
_Route: TypeAlias = "tuple[tuple[Listener, ...], _Shape | None, tuple[_Call, ...]]"


class Broadcasts:
    """The broadcasts of one running service: its listener channels and patterns."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.app = runtime.app
        self.loop = runtime.loop
        self.admission = runtime.admission
        self.publisher = runtime.replier
        self.replies = runtime.replies
        self.throttle = runtime.throttle
        self.invoke = runtime.invoker.invoke
        self.tracing = runtime.tracing
        self.tally = runtime.tally
        self.metrics = runtime.metrics
        self._draining = False  # a task will still take from admission.broadcasts
        self._batched = runtime.transport.ends_batches  # else each one is started at once
        # Channel or pattern -> its _Route: listeners are inspected once, and again only
        # when the channel's listeners change (the registry replaces its tuple then).
        self._routes: dict[str, _Route] = {}
        self._backlogs: dict[Listener, Backlog] = {}
        # Whether daebus.flow logs each broadcast: asked once per batch, not per message.
        self._flow_debug = False
        self.shared = SharedListeners(runtime, self._queue_won)

    def on_broadcast(self, delivery: Delivery) -> None:
        """Transport callback for listener channels and patterns: queue it for its batch.

        The transport calls :meth:`start` at the batch's end (if it
        :attr:`~daebus.transport.Transport.ends_batches`; else it is called here), and
        the queued broadcasts start as slots allow. When the queue holds
        ``max_queued_bytes``, listeners have fallen behind: the broadcast is dropped,
        with a warning that counts the drops per channel. Never returns an awaitable:
        the transport keeps reading (see :mod:`daebus.runtime`).

        A message for shared listeners is claimed for them first; only what this
        instance handles now is queued (see :mod:`.shared_listeners`).
        """
        if self.shared.counts:
            sorted_out = self.shared.sort(delivery)
            if sorted_out is None:
                return
            delivery = sorted_out
        self._queue(delivery)

    def subscribed(self, name: str) -> None:
        """A listener channel or pattern is subscribed (again): see :mod:`.shared_listeners`."""
        self.shared.subscribed(name)

    def _queue_won(self, delivery: Delivery) -> None:
        """A message won for a shared listener: queue it, and handle it as slots allow."""
        self._queue(delivery)
        self.start()

    def _queue(self, delivery: Delivery) -> None:
        admission = self.admission
        queue = admission.broadcasts
        queued = admission.bytes + len(delivery.data) + QUEUED_OVERHEAD
        if queued > admission.max_bytes and queue:  # max_bytes is 0 once stopping
            self._drop(delivery)
            return
        admission.bytes = queued
        queue.append(delivery)
        if not self._batched:
            self.start()

    def start(self) -> None:
        """Handle the queued broadcasts in a task, unless one is taking them already."""
        if self.admission.broadcasts and not self._draining:
            self._draining = True
            self.admission.track(start_task(self.loop, self.handle_queued()))

    def _drop(self, delivery: Delivery) -> None:
        admission = self.admission
        if admission.stopping:
            admission.dropped_at_stop += 1
            return
        key = delivery.pattern if delivery.pattern is not None else delivery.channel
        if self.metrics is not None:
            self.metrics.refused("broadcast", key, "busy")
        self.throttle.log(
            logging.WARNING,
            f"dropped {key}",
            "listeners fell behind: dropped a message on %r (%d broadcasts waiting, "
            "max_queued_bytes reached)",
            shorten(delivery.channel),
            len(admission.broadcasts),
        )

    def _hand_over(self) -> None:
        """The current task takes no more broadcasts: a new one takes those queued.

        A plain task, not an eager one: started inside this task, an eager one would
        run its first step nested in this one's, and a run of messages that each wait
        would nest as deep as the queue is long.
        """
        self._draining = bool(self.admission.broadcasts)
        if self._draining:
            self.admission.track(self.loop.create_task(self.handle_queued()))

    async def handle_queued(self) -> None:
        """Handle the queued broadcasts in order, in this task, until one waits.

        A task of its own for each message would cost much of a listener's time per
        message (bench/README.md). Each message still gets what its own task would give
        it: a context of its own, and a task that is running it from start to end, so
        ``asyncio.current_task()``, ``asyncio.timeout()`` and cancellation work in a
        listener. To keep that true, the first message that waits is seen through by
        this task, and a new task takes the rest of the queue.
        """
        admission = self.admission
        queue = admission.broadcasts
        self._flow_debug = flow.isEnabledFor(logging.DEBUG)
        while queue:
            # Not admission.active: this runs for every broadcast.
            if (
                admission.tasks + admission.jobs_started - admission.jobs_finished
                >= admission.capacity
            ):
                if admission.wait_for_slot():
                    self._draining = False
                    return
                continue
            delivery = queue.popleft()
            admission.bytes -= len(delivery.data) + QUEUED_OVERHEAD
            admission.tasks += 1  # handle() ends with task_done()
            try:
                stepped = first_step(self.handle(delivery))
            except BaseException:  # CancelledError or KeyboardInterrupt: as from its own task
                self._hand_over()
                raise
            if stepped is None:
                continue
            self._hand_over()
            await finish(stepped)
            return
        self._draining = False

    async def handle(self, delivery: Delivery) -> None:
        """Decode one broadcast and call its listeners; ends with ``task_done()``."""
        traced = None
        try:
            found = self._shape_for(delivery)
            if found is None:
                return
            shape, value = found
            if shape is None or type(delivery) is ForListeners:  # several, or ordered
                await self._call_each(delivery, value)
                return
            listener, kind, takes_channel = shape
            if self.tracing is not None:
                traced = self.tracing.broadcast(delivery)
            ctx = BroadcastContext(self.app, self.publisher, self.replies, delivery, value)
            metrics = self.metrics
            started = metrics.clock() if metrics is not None else 0.0
            status = "ok"
            try:
                if kind is ASYNC:  # the common case, without invoke()'s layers
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
            except asyncio.CancelledError:
                raise
            # KeyboardInterrupt and SystemExit too: one listener must not stop the service.
            except BaseException as exc:
                status = "error"
                self._failed(delivery, exc)
            if metrics is not None:
                metrics.handled("broadcast", delivery.pattern or delivery.channel, status, started)
        finally:
            if traced is not None:
                traced.close()
            self.tally.broadcasts += 1
            self.admission.task_done()

    def _failed(self, delivery: Delivery, exc: BaseException, name: str | None = None) -> None:
        self.tally.broadcast_errors += 1
        if self.tracing is not None:
            self.tracing.failed(exc)
        key = delivery.pattern or delivery.channel
        self.throttle.log(
            logging.ERROR,
            f"listener {key}" if name is None else f"listener {key} {name}",
            "listener %sfor %r failed on a message from %r",
            "" if name is None else f"{name} ",
            shorten(key),
            shorten(delivery.channel),
            exc_info=exc,
        )

    async def _call_each(self, delivery: Delivery, value: Any) -> None:
        """Call several listeners (or an ordered one): each in a task of its own."""
        key = delivery.pattern if delivery.pattern is not None else delivery.channel
        route = self._routes[key]  # as _shape_for left it, just now
        calls = route[2]
        if type(delivery) is ForListeners:
            chosen = [listener.func for listener in delivery.listeners]
            calls = tuple(
                call
                for listener, call in zip(route[0], calls, strict=True)
                if any(listener.func is func for func in chosen)
            )
            if len(calls) == 1 and calls[0][3] is None:
                await self._call(calls[0], delivery, value, len(route[0]) > 1)
                return
        if len(calls) == 1:
            await self._call_in_order(calls[0], delivery, value)
            return
        await asyncio.gather(
            *(
                self._call(call, delivery, value, True)
                if call[3] is None
                else self._call_in_order(call, delivery, value)
                for call in calls
            )
        )

    async def _call(self, call: _Call, delivery: Delivery, value: Any, named: bool) -> None:
        """Call one listener in a context of its own; a failure is logged."""
        listener, kind, takes_channel, _ = call
        traced = None if self.tracing is None else self.tracing.broadcast(delivery)
        ctx = BroadcastContext(self.app, self.publisher, self.replies, delivery, value)
        args = (value, delivery.channel) if takes_channel else (value,)
        metrics = self.metrics
        started = metrics.clock() if metrics is not None else 0.0
        status = "ok"
        try:
            await self.invoke(listener, ctx, args, None if kind is ASYNC else ctx.response)
            if ctx.built and ctx.response.sent:
                await ctx.response.flush()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            status = "error"
            self._failed(delivery, exc, _name_of(listener) if named else None)
        finally:
            if traced is not None:
                traced.close()
        if metrics is not None:
            metrics.handled("broadcast", delivery.pattern or delivery.channel, status, started)

    async def _call_in_order(
        self, call: _Call, delivery: Delivery | None, value: Any, *, resumed: bool = False
    ) -> None:
        """Call an ordered listener, or queue the message while it handles another.

        The caller that finds it idle handles its waiting messages too, one at a time,
        each in a context of its own, unless the listener was removed meanwhile.
        ``resumed``: the backlog was handed over with messages waiting (``delivery`` is
        None).
        """
        backlog = call[3]
        assert backlog is not None
        if backlog.busy and not resumed:
            assert delivery is not None
            self._hold(backlog, delivery, value)
            return
        backlog.busy = True
        admission = self.admission
        waiting = backlog.waiting
        try:
            if delivery is not None:
                await _isolated(self._call(call, delivery, value, True))
            while waiting:
                delivery, value = waiting.popleft()
                admission.bytes -= len(delivery.data) + QUEUED_OVERHEAD
                key = delivery.pattern if delivery.pattern is not None else delivery.channel
                if backlog.listener in self.app._listeners.get(key, ()):
                    await _isolated(self._call(call, delivery, value, True))
        finally:
            if waiting and not admission.stopping:
                # Cancelled with messages waiting: a task of its own takes them, still
                # in order (the backlog stays busy meanwhile).
                admission.spawn(self._resume(call))
            else:
                backlog.busy = False

    async def _resume(self, call: _Call) -> None:
        try:
            await self._call_in_order(call, None, None, resumed=True)
        finally:
            self.admission.task_done()

    def _hold(self, backlog: Backlog, delivery: Delivery, value: Any) -> None:
        """Queue a message for a busy ordered listener, or drop it if too much waits."""
        admission = self.admission
        size = len(delivery.data) + QUEUED_OVERHEAD
        if admission.stopping or (admission.bytes + size > admission.max_bytes and backlog.waiting):
            self._drop(delivery)
            return
        admission.bytes += size
        backlog.waiting.append((delivery, value))

    def drop_held(self) -> None:
        """The service stops: drop the messages waiting for ordered listeners."""
        admission = self.admission
        for backlog in self._backlogs.values():
            admission.dropped_at_stop += len(backlog.waiting)
            backlog.waiting.clear()

    def _shape_for(self, delivery: Delivery) -> tuple[_Shape | None, Any] | None:
        """A broadcast's decoded value, and how to call its listener if it has one alone.

        The shape is None if the channel has several listeners, or an ordered one:
        :attr:`_routes` says how to call them then. None if there is nothing to do.
        """
        key = delivery.pattern if delivery.pattern is not None else delivery.channel
        listeners = self.app._listeners.get(key)
        if listeners is None:
            return None
        route = self._routes.get(key)
        if route is None or route[0] is not listeners:
            route = self._routes[key] = self._route(listeners)
        try:
            value = encoding.loads(delivery.data)
        except ValueError:
            self.throttle.log(
                logging.WARNING,
                f"not JSON {key}",
                "dropped a message on %r that is not JSON: %s",
                shorten(delivery.channel),
                preview(delivery.data),
            )
            return None
        if self._flow_debug:
            flow.debug(
                "-> %s (listener %s) %s", shorten(delivery.channel), key, preview(delivery.data)
            )
        return route[1], value

    def _route(self, listeners: tuple[Listener, ...]) -> _Route:
        calls = tuple(
            (
                listener.func,
                kind_of(listener.func),
                accepts_arguments(listener.func, 2),
                self._backlogs.setdefault(listener, Backlog(listener))
                if listener.ordered
                else None,
            )
            for listener in listeners
        )
        if len(calls) == 1 and calls[0][3] is None:
            return listeners, calls[0][:3], calls
        return listeners, None, calls


async def _isolated(coroutine: Coroutine[Any, None, None]) -> None:
    """Await ``coroutine`` in a copy of the current context, as a task of its own would.

    What one message's listener sets in its context is then not seen by the next
    message that the same task handles.
    """
    stepped = first_step(coroutine)
    if stepped is not None:
        await finish(stepped)


def _name_of(func: Callable[..., Any]) -> str:
    return getattr(func, "__qualname__", None) or repr(func)


class BroadcastContext(context.MessageContext):
    """A listener's context, whose request and response are made on first use.

    Most listeners never read them. One is made for every broadcast, so it sets the
    fields :class:`~daebus.context.MessageContext` reads itself rather than calling its
    ``__init__``, which would set the request and response it does not have yet.
    ``tests/test_listener_batches.py`` checks that it ends up with every field a
    :class:`~daebus.context.MessageContext` has.
    """

    __slots__ = ("_delivery", "_publisher", "_replies", "_value")

    def __init__(
        self,
        app: Daebus,
        publisher: Publisher,
        replies: ReplyChannels,
        delivery: Delivery,
        value: Any,
    ) -> None:
        self.app = app
        self.kind = "pubsub"
        self.built = False
        self._publisher = publisher
        self._replies = replies
        self._delivery = delivery
        self._value = value

    def _parts(self) -> tuple[PubSubRequest, PubSubResponse]:
        delivery = self._delivery
        request = PubSubRequest.from_broadcast(self._value, delivery.channel, delivery.pattern)
        # A listener's reply goes to the message's reply_to only if that is a reply
        # channel (ReplyChannels); else nowhere.
        replies = self._replies
        reply_to = request.reply_to
        if reply_to is None:
            request.reply_channel = replies.fallback(request.service)
        elif replies.refusal(reply_to) is not None:
            request.reply_channel = None
        response = PubSubResponse(
            self._publisher, request, max_message_size=self.app.max_message_size
        )
        return request, response
