"""Durable listeners: consumer groups on the streams of durable channels.

``broadcast.send(channel, data, durable=True)`` appends the message to the channel's
stream (:func:`daebus.protocol.stream_key`). Each ``@app.listen(channel, durable=True)``
reads that stream as a consumer group (``group``, by default the service's name) with
the instance's id as the member's name (:class:`~.consumer.StreamConsumer`): every
group gets every message, the instances of a group share them. docs/durable.md
describes the wire format.

Delivery is at least once. A message stays on the group's pending list until its
listener returns, then it is acknowledged. A listener that raises leaves it pending:
after a backoff (doubling from ``backoff``, with jitter) the instance takes it again
and runs it again; after ``retries`` more tries it goes to the group's dead-letter
stream with its error, and is acknowledged. A message that has been handed out more
often than its tries allow without ever being acknowledged (it kills its instance,
say) goes to the dead-letter stream without running again.

Messages are handled side by side. An ``ordered`` listener handles them one at a time
in stream order, and a ``key``-ed one in stream order per key, different keys side by
side. Order across a group needs one reader: the group's instances take turns through
a lease (:func:`daebus.protocol.order_lease_key`), held by one of them at a time and
taken over by another when its holder stops or dies. A new holder first takes, in
order, what the last one left pending. A message that fails waits for its next try
in its place: the messages behind it (of its key) wait too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from typing import TYPE_CHECKING, Any

from .. import context, encoding, protocol
from ..exceptions import SetupError, TransportError
from ..pubsub import PubSubRequest, PubSubResponse
from .consumer import StreamConsumer
from .invoke import ASYNC, accepts_arguments, error_text, kind_of

if TYPE_CHECKING:
    from .._registry import DurableListener
    from ..transport import StreamEntry
    from . import ServiceRuntime

__all__ = ["MAX_BACKOFF", "DurableListeners", "ListenerConsumer"]

logger = logging.getLogger("daebus.durable")

#: The longest wait between two tries of a message, in seconds.
MAX_BACKOFF = 300.0
#: How much of a handler's error a dead letter keeps (as an error reply does).
_ERROR_LIMIT = 2000
#: The key of the messages whose key cannot be read: they keep their order together.
_NO_KEY = object()
#: How long a message whose handling the server interrupted waits before it runs again.
_FAILED_PAUSE = 1.0


class DurableListeners:
    """The durable listeners of one running service: a consumer per (channel, group)."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime
        self.consumers: dict[tuple[str, str | None], ListenerConsumer] = {}

    async def refresh(self) -> None:
        """Start a consumer for each new durable listener, stop those removed (on the loop).

        Returns once each new group exists, so that a message sent afterwards is the
        group's even when it starts at ``"latest"``.
        """
        listeners = self.runtime.app._durable
        for key in [key for key in self.consumers if key not in listeners]:
            self.consumers.pop(key).stop_reading()  # what it holds finishes
        for key, listener in list(listeners.items()):
            consumer = self.consumers.get(key)
            if consumer is not None:
                consumer.listener = listener  # a listener registered again replaces it
                continue
            consumer = self.consumers[key] = ListenerConsumer(self.runtime, listener)
            try:
                await consumer.create_group()
            except TransportError as exc:  # the consumer tries again as it reads
                logger.warning("cannot create the group of %r: %s", consumer, exc)
            consumer.start()

    async def stop_reading(self, timeout: float) -> None:
        """Stop taking messages; those being handled finish (see :meth:`close`)."""
        consumers = list(self.consumers.values())
        for consumer in consumers:
            consumer.stop_reading()
        readers = [c.reader for c in consumers if c.reader is not None]
        if readers:
            await asyncio.wait(readers, timeout=timeout)

    async def leave(self) -> None:
        """Once the handlers are done: hand over the turns, and leave the groups.

        Not before: the next holder of a turn starts with what this one left pending.
        """
        for consumer in self.consumers.values():
            await consumer.give_up_turn()
            await consumer.leave_group()

    def close(self) -> None:
        """Stop extending claims: the handlers are done, or abandoned to other instances."""
        for consumer in self.consumers.values():
            consumer.close()
        self.consumers.clear()


class ListenerConsumer(StreamConsumer):
    """One group's member on one durable channel, on this instance."""

    def __init__(self, runtime: ServiceRuntime, listener: DurableListener) -> None:
        group = listener.group or runtime.service
        if ":" in group:
            raise SetupError(
                f"the durable listener of {listener.channel!r} needs a group= without ':' "
                f"(the service's name {group!r}, its group by default, holds one)"
            )
        super().__init__(
            runtime,
            stream=protocol.stream_key(listener.channel),
            group=group,
            start=listener.start,
            min_idle_time=listener.min_idle_time,
            what=f"the durable channel {protocol.shorten(listener.channel)!r}",
        )
        self.listener = listener
        self.channel = listener.channel
        self.dead_letters = protocol.dead_letter_key(listener.channel, group)
        self.in_order = listener.ordered or listener.key is not None
        # In order: key -> its messages taken and not yet handled, oldest first.
        self.queues: dict[Any, deque[StreamEntry]] = {}
        self.lease = protocol.order_lease_key(listener.channel, group)
        self.has_turn = False
        self._turn_keeper: asyncio.Task[None] | None = None
        self._catching_up = False  # a new holder takes what the last one left first
        self._caught_up_to = "0-0"  # where the next look for what it left starts

    # -- taking turns (ordered and keyed listeners) ---------------------------------------
    async def may_read(self) -> bool:
        """Ordered: only while this instance holds the group's turn (see the module)."""
        if not self.in_order:
            return True
        if not self.has_turn and await self.transport.claim(
            self.lease, self.name, int(self.min_idle_time * 1000)
        ):
            self.has_turn = self._catching_up = True
            self._caught_up_to = "0-0"
            self._turn_keeper = self.loop.create_task(self._keep_turn(), name=f"turn {self}")
        if not self.has_turn:
            await asyncio.sleep(self.min_idle_time / 3)
            return False
        if self._catching_up:
            await self._catch_up()
            return False
        return True

    async def _catch_up(self) -> None:
        """Take, in order, every message the group's last reader left pending.

        Each look starts where the last one stopped, so none is taken twice; the
        catching up ends once the looks have been over the whole pending list.
        """
        room = self._room()
        if room <= 0:
            await self._wait_for_room(1000)
            return
        taken, self._caught_up_to = await self.transport.stream_autoclaim(
            self.stream, self.group, self.name, 0, room, start=self._caught_up_to
        )
        if self._caught_up_to == "0-0":
            self._catching_up = False
        self._take([entry for entry in taken if entry.id not in self.held])

    async def _keep_turn(self) -> None:
        """Renew the turn while this instance holds it, stopping or not.

        In a task of its own, not in the read loop: a stop ends the reading first, and
        the handlers still running must keep the turn until they are done.
        """
        lease_ms = int(self.min_idle_time * 1000)
        while self.has_turn:
            await asyncio.sleep(self.min_idle_time / 3)
            try:
                renewed = await self.transport.renew_claim(self.lease, self.name, lease_ms)
            except TransportError as exc:
                self.runtime.throttle.log(
                    logging.WARNING if self.transport.receiving else logging.DEBUG,
                    f"durable turn {self.stream}",
                    "renewing the turn of %r failed: %s",
                    self,
                    exc,
                )
                continue
            if not renewed and self.has_turn:
                self.has_turn = False
                logger.warning("%r lost its turn to another instance", self)

    def _wait_ms(self) -> int:
        wait = super()._wait_ms()
        if self.in_order:  # soon back, should the turn be lost meanwhile
            wait = min(wait, max(int(self.min_idle_time * 1000 / 3), 1))
        return wait

    def should_reclaim(self) -> bool:
        """Not in order: only the holder of the turn reads, so nobody else holds any."""
        return not self.in_order

    async def give_up_turn(self) -> None:
        """Hand the turn to another instance at once (at stop)."""
        if self._turn_keeper is not None:
            self._turn_keeper.cancel()
        if self.has_turn:
            self.has_turn = False
            with contextlib.suppress(TransportError):
                await self.transport.release_claim(self.lease, self.name)

    def close(self) -> None:
        """Stop reading, extending claims and renewing the turn."""
        super().close()
        if self._turn_keeper is not None:
            self._turn_keeper.cancel()

    # -- taking messages ---------------------------------------------------------------
    def _room(self) -> int:
        """In order: no more than the free slots, one runner each at most (see _take)."""
        room = super()._room()
        return min(room, self._free_slots()) if self.in_order else room

    def _take(self, entries: list[StreamEntry]) -> None:
        if not self.in_order:
            super()._take(entries)
            return
        if not self.has_turn:
            return  # lost meanwhile: left pending, the next holder catches up with them
        for entry in entries:
            self.held[entry.id] = entry.deliveries
            key = self._key_of(entry)
            queue = self.queues.get(key)
            if queue is not None:
                queue.append(entry)
                continue
            # Filled before its runner starts: on Python 3.12 a task may start at once
            # (an eager task), and a runner finding its queue empty would end there.
            queue = self.queues[key] = deque([entry])
            self.runtime.admission.spawn(self._run_in_order(key, queue))
        self._start_keeping_claims()

    def _key_of(self, entry: StreamEntry) -> Any:
        key = self.listener.key
        if key is None:
            return None
        try:
            value = encoding.loads(entry.fields[protocol.STREAM_DATA_FIELD])
            found = key(value) if callable(key) else value.get(key)
            hash(found)
        except Exception:  # a message that has no key is run in the order of the keyless
            return _NO_KEY
        return found

    async def _run_in_order(self, key: Any, queue: deque[StreamEntry]) -> None:
        """Handle one key's messages one at a time, each tried until it is done with."""
        try:
            while queue:
                entry: StreamEntry | None = queue[0]
                try:
                    while entry is not None:
                        entry = await self._try_in_place(entry)
                except TransportError as exc:
                    # Still held, and first of its key: tried again, the others wait.
                    logger.warning("durable message %s on %r: %s", queue[0].id, self.channel, exc)
                    await asyncio.sleep(_FAILED_PAUSE)
                    continue
                queue.popleft()
        finally:
            if self.queues.get(key) is queue:
                del self.queues[key]
            for entry in queue:  # cancelled: left pending for the next holder
                self.release(entry.id)
            self.runtime.admission.task_done()

    async def _try_in_place(self, entry: StreamEntry) -> StreamEntry | None:
        """One try of a message; the message again when it is due for another, else None."""
        delay = await self._handle_or_delay(entry)
        if delay is None:
            return None
        await asyncio.sleep(delay)
        taken = await self.transport.stream_claim(self.stream, self.group, self.name, [entry.id])
        if not taken:
            self.release(entry.id)  # trimmed away meanwhile: nothing left to run
            return None
        self.held[entry.id] = taken[0].deliveries
        return taken[0]

    # -- handling --------------------------------------------------------------------
    async def handle(self, entry: StreamEntry) -> None:
        """Run the listener on a message taken; a failed one is taken again after a while."""
        delay = await self._handle_or_delay(entry)
        if delay is not None:
            self.retry_later(entry.id, delay)

    async def _handle_or_delay(self, entry: StreamEntry) -> float | None:
        """Run the listener on one message; return when to try it again, if it failed.

        None: it is done with (acknowledged, or moved to the dead-letter stream).
        """
        if self.is_for_another_group(entry):
            await self.ack(entry.id)  # replayed for another group: handled here already
            return None
        if entry.deliveries > self.listener.retries + 1:
            error = f"handed out {entry.deliveries} times without being acknowledged"
            await self._dead_letter(entry, error)
            return None
        try:
            value = encoding.loads(entry.fields[protocol.STREAM_DATA_FIELD])
        except (KeyError, ValueError):
            await self._dead_letter(entry, "not a JSON message in a 'data' field")
            return None
        ctx = DurableContext(self, entry, value)
        tracing = self.runtime.tracing
        traced = (
            None if tracing is None else tracing.durable_message(self.channel, self.group, entry)
        )
        func = self.listener.func
        args = (value, self.channel) if accepts_arguments(func, 2) else (value,)
        tally = self.runtime.tally
        metrics = self.runtime.metrics
        started = metrics.clock() if metrics is not None else 0.0
        try:
            if kind_of(func) is ASYNC:  # the common case, without invoke()'s layers
                token = context.push(ctx)
                try:
                    await func(*args)
                finally:
                    context.pop(token)
            else:
                await self.runtime.invoke(func, ctx, args, ctx.response)
            if ctx.built and ctx.response.sent:
                await ctx.response.flush()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # KeyboardInterrupt too: a failed try, as in invoke
            if traced is not None:
                traced.failed(exc)
            tally.durable += 1
            tally.durable_errors += 1
            if metrics is not None:
                metrics.handled("durable", self.channel, "error", started)
            return await self._failed(entry, exc)
        finally:
            if traced is not None:
                traced.close()
        tally.durable += 1
        if metrics is not None:
            metrics.handled("durable", self.channel, "ok", started)
        if self.in_order:
            await self.ack(entry.id)  # confirmed before the next message of its key runs
        else:
            self.ack_soon(entry.id)
        return None

    async def _failed(self, entry: StreamEntry, exc: BaseException) -> float | None:
        """Log a failed try; dead-letter the message after the last, else its backoff."""
        tries = self.listener.retries + 1
        self.runtime.throttle.log(
            logging.ERROR,
            f"durable listener {self.channel}",
            "durable listener for %r (group %r) failed on message %s, try %d of %d",
            protocol.shorten(self.channel),
            self.group,
            entry.id,
            entry.deliveries,
            tries,
            exc_info=exc,
        )
        if entry.deliveries >= tries:
            error = f"{type(exc).__name__}: {error_text(exc)}"
            await self._dead_letter(entry, protocol.shorten(error, _ERROR_LIMIT))
            return None
        if self.runtime.metrics is not None:
            self.runtime.metrics.durable_retry(self.channel, self.group)
        delay: float = min(self.listener.backoff * 2.0 ** (entry.deliveries - 1), MAX_BACKOFF)
        # Jitter: instances that failed together do not all try again together.
        return delay * random.uniform(0.5, 1.0)

    async def _dead_letter(self, entry: StreamEntry, error: str) -> None:
        """Move the message to the group's dead-letter stream, then acknowledge it.

        In that order: a crash between the two leaves it in both, never in neither.
        """
        fields = {
            **entry.fields,
            "id": entry.id.encode(),
            "channel": self.channel.encode(),
            "group": self.group.encode(),
            "error": error.encode("utf-8", "replace"),
            "deliveries": str(entry.deliveries).encode(),
            "consumer": self.name.encode(),
        }
        await self.transport.stream_add(self.dead_letters, fields, protocol.DEFAULT_STREAM_MAXLEN)
        await self.ack(entry.id)
        if self.runtime.metrics is not None:
            self.runtime.metrics.dead_letter(self.channel, self.group)
        # Poison messages can come in floods: a line, then a count, per channel.
        self.runtime.throttle.log(
            logging.WARNING,
            f"dead letter {self.channel}",
            "durable message %s on %r (group %r) moved to %r: %s",
            entry.id,
            protocol.shorten(self.channel),
            self.group,
            self.dead_letters,
            protocol.shorten(error),
        )


class DurableContext(context.MessageContext):
    """A durable listener's context, whose request and response are made on first use.

    As :class:`.broadcasts.BroadcastContext` is, for the same reason: most listeners
    never read them. Its request carries the message's id and delivery count; what the
    listener sends with ``response`` goes to its service's responses channel, as a
    listener's does when the message names no reply channel.
    """

    __slots__ = ("_consumer", "_entry", "_value")

    def __init__(self, consumer: ListenerConsumer, entry: StreamEntry, value: Any) -> None:
        self.app = consumer.runtime.app
        self.kind = "pubsub"
        self.built = False
        self._consumer = consumer
        self._entry = entry
        self._value = value

    def _parts(self) -> tuple[PubSubRequest, PubSubResponse]:
        runtime, entry = self._consumer.runtime, self._entry
        request = PubSubRequest.from_broadcast(self._value, self._consumer.channel, None)
        request.message_id = entry.id
        request.delivery_count = entry.deliveries
        request.reply_channel = runtime.replies.fallback(request.service)
        response = PubSubResponse(
            runtime.replier, request, max_message_size=runtime.app.max_message_size
        )
        return request, response
