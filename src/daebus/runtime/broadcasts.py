"""Broadcasts: listener batches, each message in a context of its own.

Broadcasts are queued as they are read and started as slots allow, in a task that
takes them in order: broadcasts that arrive together share that task, until one of
them waits (see :meth:`Broadcasts.handle_queued`). When ``max_queued_bytes`` of
messages wait, listeners have fallen behind and a broadcast is dropped, with a
warning counted per channel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import context, encoding
from ..protocol import ReplyChannels, shorten
from ..pubsub import PubSubRequest, PubSubResponse
from .admission import QUEUED_OVERHEAD
from .eager import finish, first_step, start_task
from .invoke import ASYNC, accepts_arguments, kind_of
from .requests import preview

if TYPE_CHECKING:
    from ..app import Daebus
    from ..transport import Delivery
    from . import ServiceRuntime
    from .publisher import Publisher

__all__ = ["Broadcasts"]

flow = logging.getLogger("daebus.flow")

#: A listener as it is called: (listener, kind, takes_channel).
_Shape = tuple[Callable[..., Any], str, bool]


class Broadcasts:
    """The broadcasts of one running service: its listener channels and patterns."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.app = runtime.app
        self.loop = runtime.loop
        self.admission = runtime.admission
        self.publisher = runtime.publisher
        self.replies = runtime.replies
        self.throttle = runtime.throttle
        self.invoke = runtime.invoker.invoke
        self._draining = False  # a task will still take from admission.broadcasts
        self._batched = runtime.transport.ends_batches  # else each one is started at once
        # Channel or pattern -> (listener, kind, takes_channel): a listener is inspected
        # once, and again only if another function replaces it in listen_handlers.
        self._listeners: dict[str, _Shape] = {}
        # Whether daebus.flow logs each broadcast: asked once per batch, not per message.
        self._flow_debug = False

    def on_broadcast(self, delivery: Delivery) -> None:
        """Transport callback for listener channels and patterns: queue it for its batch.

        The transport calls :meth:`start` at the batch's end (if it
        :attr:`~daebus.transport.Transport.ends_batches`; else it is called here), and
        the queued broadcasts start as slots allow. When the queue holds
        ``max_queued_bytes``, listeners have fallen behind: the broadcast is dropped,
        with a warning that counts the drops per channel. Never returns an awaitable:
        the transport keeps reading (see :mod:`daebus.runtime`).
        """
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
        """Decode one broadcast and call its listener; ends with ``task_done()``."""
        try:
            found = self._listener_for(delivery)
            if found is None:
                return
            (listener, kind, takes_channel), value = found
            ctx = BroadcastContext(self.app, self.publisher, self.replies, delivery, value)
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
            self.admission.task_done()

    def _listener_for(self, delivery: Delivery) -> tuple[_Shape, Any] | None:
        """A broadcast's ``(listener, kind, takes_channel)`` and its decoded value.

        None if there is nothing to do.
        """
        key = delivery.pattern if delivery.pattern is not None else delivery.channel
        listener = self.app.listen_handlers.get(key)
        if listener is None:
            return None
        shape = self._listeners.get(key)
        if shape is None or shape[0] is not listener:
            shape = self._listeners[key] = (
                listener,
                kind_of(listener),
                accepts_arguments(listener, 2),
            )
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
        return shape, value


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
