"""Durable listeners: consumer groups on the streams of durable channels.

``broadcast.send(channel, data, durable=True)`` appends the message to the channel's
stream (:func:`daebus.protocol.stream_key`, trimmed to about ``maxlen`` entries as
messages are added). Each ``@app.listen(channel, durable=True)`` reads that stream as
a consumer group (``group``, by default the service's name) with the instance's id as
the consumer name: every group gets every message, the instances of a group share
them. docs/durable.md describes the wire format.

Delivery is at least once. A message stays on the group's pending list until its
listener returns, then it is acknowledged. A listener that raises leaves it pending:
after a backoff (doubling from ``backoff``, with jitter) the instance claims it again
(``XCLAIM``, which counts the delivery on the server) and runs it again; after
``retries`` more tries it goes to the group's dead-letter stream with its error, and
is acknowledged. While an instance holds a message (running it or waiting to retry
it) it extends its claim every third of ``min_idle_time`` (``XCLAIM ... JUSTID``), so
no other instance takes it; messages held by an instance that died go idle, and
another instance takes them (``XAUTOCLAIM``) once they have been idle for
``min_idle_time``. A message that has been handed out more often than its tries
allow without ever being acknowledged (it kills its instance, say) goes to the
dead-letter stream without running again.

Listeners run through the runtime's admission and invoker, in a context of their own,
as other listeners do; each group's consumer holds at most :data:`PREFETCH` messages
at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import TYPE_CHECKING, Any

from .. import context, encoding, protocol
from ..exceptions import TransportError
from ..pubsub import PubSubRequest, PubSubResponse
from .invoke import accepts_arguments, error_text

if TYPE_CHECKING:
    from .._registry import DurableListener
    from ..transport import StreamEntry
    from . import ServiceRuntime

__all__ = ["MAX_BACKOFF", "PREFETCH", "DurableListeners"]

logger = logging.getLogger("daebus.durable")

#: How many messages one group's consumer holds at once (running, or waiting to retry).
PREFETCH = 16
#: The longest wait between two tries of a message, in seconds.
MAX_BACKOFF = 300.0
#: The longest wait of one read for new messages, in ms: how soon a stop is noticed.
_READ_BLOCK_MS = 1000
#: How long a consumer waits before it reads again after a failed read.
_FAILED_READ_PAUSE = 0.5
_STARTS = {"latest": "$", "earliest": "0"}
#: How much of a handler's error a dead letter keeps (as an error reply does).
_ERROR_LIMIT = 2000


class DurableListeners:
    """The durable listeners of one running service: a consumer per (channel, group)."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime
        self.consumers: dict[tuple[str, str | None], Consumer] = {}

    async def refresh(self) -> None:
        """Start a consumer for each durable listener that has none (on the loop).

        Returns once each new group exists, so that a message sent afterwards is the
        group's even when it starts at ``"latest"``.
        """
        for key, listener in list(self.runtime.app._durable.items()):
            consumer = self.consumers.get(key)
            if consumer is not None:
                consumer.listener = listener  # a listener registered again replaces it
                continue
            consumer = self.consumers[key] = Consumer(self.runtime, listener)
            try:
                await consumer.create_group()
            except TransportError as exc:  # the consumer tries again as it reads
                logger.warning("cannot create the group of %r: %s", consumer, exc)
            consumer.start()

    async def stop_reading(self, timeout: float) -> None:
        """Stop taking messages; those being handled finish (see :meth:`close`)."""
        consumers = list(self.consumers.values())
        for consumer in consumers:
            consumer.stopping = True
        readers = [c.reader for c in consumers if c.reader is not None]
        if readers:
            _done, late = await asyncio.wait(readers, timeout=timeout)
            for task in late:
                task.cancel()

    def close(self) -> None:
        """Stop extending claims: the handlers are done, or abandoned to other instances."""
        for consumer in self.consumers.values():
            if consumer.keeper is not None:
                consumer.keeper.cancel()
        self.consumers.clear()


class Consumer:
    """One group's consumer of one channel's stream, on this instance."""

    def __init__(self, runtime: ServiceRuntime, listener: DurableListener) -> None:
        self.runtime = runtime
        self.listener = listener
        self.channel = listener.channel
        self.stream = protocol.stream_key(listener.channel)
        self.group = listener.group or runtime.service
        self.dead_letters = protocol.dead_letter_key(listener.channel, self.group)
        self.name = runtime.instances.id
        self.transport = runtime.transport
        self.loop = runtime.loop
        self.stopping = False
        # Message id -> its delivery count, for every message held: running or waiting.
        self.held: dict[str, int] = {}
        # Message id -> the loop time its next try is due.
        self.retry_at: dict[str, float] = {}
        self._freed = asyncio.Event()
        self._group_made = False  # the group is known to exist
        self.reader: asyncio.Task[None] | None = None
        self.keeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start reading, and extending the claims of what is held."""
        self.reader = self.loop.create_task(self._read_forever(), name=f"durable {self}")
        self.keeper = self.loop.create_task(self._keep_claims(), name=f"claims {self}")

    def __repr__(self) -> str:
        return f"<Consumer {self.channel!r} group={self.group!r} as {self.name}>"

    # -- reading ---------------------------------------------------------------------
    async def create_group(self) -> None:
        """Create the group at its start position, unless it exists."""
        start = _STARTS.get(self.listener.start, self.listener.start)
        await self.transport.stream_create_group(self.stream, self.group, start)
        self._group_made = True

    async def _read_forever(self) -> None:
        min_idle_ms = int(self.listener.min_idle_time * 1000)
        reclaim_every = self.listener.min_idle_time / 2
        next_reclaim = 0.0
        while not self.stopping:
            try:
                if not self._group_made:
                    await self.create_group()
                now = self.loop.time()
                if now >= next_reclaim:
                    next_reclaim = now + reclaim_every
                    taken = await self.transport.stream_autoclaim(
                        self.stream, self.group, self.name, min_idle_ms, self._room()
                    )
                    self._take([e for e in taken if e.id not in self.held])
                await self._retry_due()
                if self._room() <= 0:
                    self._freed.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._freed.wait(), self._wait_ms() / 1000)
                    continue
                self._take(
                    await self.transport.stream_read(
                        self.stream, self.group, self.name, self._room(), self._wait_ms()
                    )
                )
            except TransportError as exc:
                if "NOGROUP" in str(exc):
                    self._group_made = False  # the stream or the group was deleted: make them again
                self.runtime.throttle.log(
                    logging.WARNING,
                    f"durable read {self.channel}",
                    "reading the durable channel %r as group %r failed: %s",
                    protocol.shorten(self.channel),
                    self.group,
                    exc,
                )
                await asyncio.sleep(_FAILED_READ_PAUSE)

    def _room(self) -> int:
        return PREFETCH - len(self.held)

    def _wait_ms(self) -> int:
        """How long a read may wait: until the next retry is due, at most a second."""
        wait = _READ_BLOCK_MS
        if self.retry_at:
            due = min(self.retry_at.values()) - self.loop.time()
            wait = min(wait, int(due * 1000))
        return max(wait, 1)

    async def _retry_due(self) -> None:
        now = self.loop.time()
        due = [i for i, at in self.retry_at.items() if at <= now]
        if not due:
            return
        for message_id in due:
            del self.retry_at[message_id]
        taken = await self.transport.stream_claim(self.stream, self.group, self.name, due)
        for message_id in set(due) - {entry.id for entry in taken}:
            self._release(message_id)  # trimmed away meanwhile: nothing left to run
        self._take(taken)

    def _take(self, entries: list[StreamEntry]) -> None:
        admission = self.runtime.admission
        for entry in entries:
            self.held[entry.id] = entry.deliveries
            admission.spawn(self._handle(entry))

    def _release(self, message_id: str) -> None:
        self.held.pop(message_id, None)
        self.retry_at.pop(message_id, None)
        self._freed.set()

    # -- handling --------------------------------------------------------------------
    async def _handle(self, entry: StreamEntry) -> None:
        """Run the listener on one message; ack it, or retry it, or dead-letter it."""
        try:
            if entry.deliveries > self.listener.retries + 1:
                error = f"handed out {entry.deliveries} times without being acknowledged"
                await self._dead_letter(entry, error)
                return
            target = entry.fields.get(protocol.STREAM_GROUP_FIELD)
            if target is not None and target != self.group.encode():
                # A dead letter replayed for another group: this one handled it already.
                await self.transport.stream_ack(self.stream, self.group, [entry.id])
                self._release(entry.id)
                return
            try:
                value = encoding.loads(entry.fields[protocol.STREAM_DATA_FIELD])
            except (KeyError, ValueError):
                await self._dead_letter(entry, "not a JSON message in a 'data' field")
                return
            try:
                await self._call(entry, value)
            except (asyncio.CancelledError, KeyboardInterrupt):
                self._release(entry.id)  # left pending: another instance takes it
                raise
            except BaseException as exc:
                await self._failed(entry, exc)
                return
            await self.transport.stream_ack(self.stream, self.group, [entry.id])
            self._release(entry.id)
        except TransportError as exc:
            # Left pending: tried again once it has been idle for min_idle_time.
            self._release(entry.id)
            logger.warning("durable message %s on %r: %s", entry.id, self.channel, exc)
        finally:
            self.runtime.admission.task_done()

    async def _call(self, entry: StreamEntry, value: Any) -> None:
        runtime = self.runtime
        request = PubSubRequest.from_broadcast(value, self.channel, None)
        request.message_id = entry.id
        request.delivery_count = entry.deliveries
        request.reply_channel = runtime.replies.fallback(request.service)
        response = PubSubResponse(
            runtime.publisher, request, max_message_size=runtime.app.max_message_size
        )
        ctx = context.MessageContext(runtime.app, "pubsub", request, response)
        func = self.listener.func
        args = (value, self.channel) if accepts_arguments(func, 2) else (value,)
        await runtime.invoke(func, ctx, args, response)
        if response.sent:
            await response.flush()

    async def _failed(self, entry: StreamEntry, exc: BaseException) -> None:
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
            return
        delay = min(self.listener.backoff * 2 ** (entry.deliveries - 1), MAX_BACKOFF)
        # Jitter: instances that failed together do not all try again together.
        self.retry_at[entry.id] = self.loop.time() + delay * random.uniform(0.5, 1.0)

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
        await self.transport.stream_ack(self.stream, self.group, [entry.id])
        self._release(entry.id)
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

    # -- claims ----------------------------------------------------------------------
    async def _keep_claims(self) -> None:
        """Reset the idle time of every message held, so no other instance takes it."""
        every = self.listener.min_idle_time / 3
        while True:
            await asyncio.sleep(every)
            if not self.held:
                continue
            try:
                await self.transport.stream_claim(
                    self.stream, self.group, self.name, list(self.held), touch=True
                )
            except TransportError as exc:
                logger.warning("extending the claims on %r failed: %s", self.channel, exc)
