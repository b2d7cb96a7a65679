"""A consumer group's member on this instance: what reads a stream, and what it holds.

Durable listeners (:mod:`.durable`) and durable requests (:mod:`.durable_requests`)
both read a stream as a member of a consumer group, named by the instance's id. This
is what they share: reading new entries (``XREADGROUP``), taking those of members that
died (``XAUTOCLAIM`` of entries idle for ``min_idle_time``), taking again those due for
another try (``XCLAIM``, which counts the delivery), and extending the claim on every
entry held (``XCLAIM ... JUSTID`` every third of ``min_idle_time``) so that no other
member takes an entry this one is still working on. What is done with an entry is the
subclass's :meth:`StreamConsumer.handle`.

A consumer has at most :data:`PREFETCH` entries running or waiting for a slot, holds at
most :data:`MAX_HELD` (those waiting for another try included), and takes none while
the service handles ``max_in_flight`` messages already; an entry taken starts once the
service has a free slot. Its read waits on a connection of its own; stopping cancels
the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from .. import protocol
from ..exceptions import TransportError
from .eager import finish, first_step, start_task

if TYPE_CHECKING:
    from ..transport import StreamEntry
    from . import ServiceRuntime

__all__ = ["MAX_HELD", "PREFETCH", "StreamConsumer"]

logger = logging.getLogger("daebus.durable")

#: How many entries one consumer has running or waiting for a slot at once (and reads
#: at most in one read); those running are within the service's ``max_in_flight``.
PREFETCH = 64
#: How many entries one consumer holds at once, those waiting for another try included:
#: a flood of failing messages, each waiting out its backoff, does not stop the others.
MAX_HELD = 256
#: The longest wait of one read for new entries, in ms (the transport may cap it): a
#: consumer with nothing to do wakes up this seldom.
_READ_BLOCK_MS = 30_000
#: How long a consumer waits before it looks again for a free slot of the service, in ms.
_FULL_PAUSE_MS = 50
#: The pauses before each new try of an acknowledgement the server did not take.
_ACK_PAUSES = (0.2, 0.5, 1.0, 2.0)
#: How many XAUTOCLAIMs one look for the entries of members that died makes at most.
_RECLAIM_LOOKS = 10
#: How long a consumer waits before it reads again after a failed read.
_FAILED_READ_PAUSE = 0.5
_STARTS = {"latest": "$", "earliest": "0"}


class StreamConsumer:
    """One member of a consumer group, on this instance; see the module docstring."""

    #: Whether an entry is deleted from the stream once acknowledged: true where the
    #: stream has one group, whose entries nobody reads again.
    delete_when_done = False

    def __init__(
        self,
        runtime: ServiceRuntime,
        *,
        stream: str,
        group: str,
        start: str,
        min_idle_time: float,
        what: str,
    ) -> None:
        self.runtime = runtime
        self.stream = stream
        self.group = group
        self.start_at = start
        self.min_idle_time = min_idle_time
        self.what = what  # for log lines: "the durable channel 'orders'"
        self.name = runtime.instances.id
        self.transport = runtime.transport
        self.loop = runtime.loop
        self.stopping = False
        # Entry id -> its delivery count, for every entry held: running or waiting.
        self.held: dict[str, int] = {}
        # Entry id -> the timer of its next try.
        self.retry_at: dict[str, asyncio.TimerHandle] = {}
        self._freed = asyncio.Event()
        self._group_made = False  # the group is known to exist
        self.reader: asyncio.Task[None] | None = None
        self.keeper: asyncio.Task[None] | None = None
        # The entries handled in this turn of the loop, and the future of their one XACK.
        self._acks: tuple[list[str], asyncio.Future[None]] | None = None
        # How many entries held are done with, waiting for their XACK's answer.
        self.acking = 0
        # Where the next look for entries to reclaim starts (see reclaim).
        self._reclaim_from = "0-0"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.stream!r} group={self.group!r} as {self.name}>"

    def start(self) -> None:
        """Start reading."""
        self.reader = self.loop.create_task(self._read_forever(), name=f"read {self}")

    def stop_reading(self) -> None:
        """Take nothing more; what is held finishes (or is left to the other members)."""
        self.stopping = True
        if self.reader is not None:
            self.reader.cancel()

    async def leave_group(self) -> None:
        """Leave the group, if this member holds nothing: a stopped one is not counted."""
        if self.held or not self._group_made:
            return
        try:
            await self.transport.stream_leave_group(self.stream, self.group, self.name)
        except TransportError as exc:
            logger.debug("leaving the group of %r failed: %s", self.stream, exc)

    def close(self) -> None:
        """Stop extending claims: what was held is done, or abandoned to the others."""
        self.stop_reading()
        for timer in self.retry_at.values():
            timer.cancel()
        if self.keeper is not None:
            self.keeper.cancel()

    async def create_group(self) -> None:
        """Create the group at its start position, unless it exists."""
        start = _STARTS.get(self.start_at, self.start_at)
        await self.transport.stream_create_group(self.stream, self.group, start)
        self._group_made = True

    # -- what subclasses decide ----------------------------------------------------------
    async def handle(self, entry: StreamEntry) -> None:
        """Handle one entry taken: acknowledge it, or :meth:`retry_later`, or leave it."""
        raise NotImplementedError

    def should_reclaim(self) -> bool:
        """Whether to look for the entries of members that died, now that it is due."""
        return True

    async def may_read(self) -> bool:
        """Whether this member reads now (one that waits for its turn says False)."""
        return True

    # -- reading ---------------------------------------------------------------------
    async def _read_forever(self) -> None:
        min_idle_ms = int(self.min_idle_time * 1000)
        reclaim_every = self.min_idle_time / 2
        next_reclaim = 0.0
        while not self.stopping:
            try:
                if not await self.may_read():
                    continue
                if not self._group_made:
                    await self.create_group()
                now = self.loop.time()
                reclaiming = self.should_reclaim()
                if now >= next_reclaim and self._room() > 0:
                    next_reclaim = now + reclaim_every
                    if reclaiming:
                        await self.reclaim(min_idle_ms)
                wait_ms = self._wait_ms()
                if reclaiming:  # back in time for the next look
                    wait_ms = max(min(wait_ms, int((next_reclaim - now) * 1000)), 1)
                if self._room() <= 0:
                    await self._wait_for_room(wait_ms)
                    continue
                taken = await self.transport.stream_read(
                    self.stream, self.group, self.name, self._room(), wait_ms
                )
                self._take(taken)
                if taken:
                    await self._settle()
            except TransportError as exc:
                if "NOGROUP" in str(exc):
                    self._group_made = False
                    self.runtime.throttle.log(
                        logging.WARNING,
                        f"durable group {self.stream}",
                        "the stream of %s or its group %r is gone (deleted, or the server "
                        "restarted without persistence): making them again",
                        self.what,
                        self.group,
                    )
                else:
                    # While the subscriber reconnects, the transport already says that the
                    # server is unreachable, and for how long.
                    self.runtime.throttle.log(
                        logging.WARNING if self.transport.receiving else logging.DEBUG,
                        f"durable read {self.stream}",
                        "reading %s as group %r failed: %s",
                        self.what,
                        self.group,
                        exc,
                    )
                await asyncio.sleep(_FAILED_READ_PAUSE)

    async def _settle(self) -> None:
        """Let the entries just taken start, and wait for the answer to their ``XACK``.

        As a plain loop of read, handle, acknowledge does: while the acknowledgement
        travels, new entries pile up, and the next read takes them together. Reading
        again at once would take them a few at a time, each read costing this process
        and the server about as much as many entries do.
        """
        await asyncio.sleep(0)  # before 3.12 the batch's task starts on this turn
        acks = self._acks
        if acks is not None:
            with contextlib.suppress(TransportError):
                await asyncio.shield(acks[1])

    async def reclaim(self, min_idle_ms: int) -> None:
        """Take the entries other members have held for ``min_idle_ms`` or more.

        Each ``XAUTOCLAIM`` looks at ten times as many pending entries as it may take:
        the look goes on where the last one stopped (across calls too) until it has been
        over the whole pending list, so that entries far down a long list, behind those
        of members still at work, are found as well.
        """
        for _ in range(_RECLAIM_LOOKS):
            room = self._room()
            if room <= 0:
                return
            taken, self._reclaim_from = await self.transport.stream_autoclaim(
                self.stream, self.group, self.name, min_idle_ms, room, start=self._reclaim_from
            )
            self._take([entry for entry in taken if entry.id not in self.held])
            if self._reclaim_from == "0-0":
                return

    def _room(self) -> int:
        """How many entries to take now: none while every slot of the service is taken.

        Else up to PREFETCH running or waiting here (MAX_HELD held), and up to the
        service's ``max_in_flight`` more than its free slots. Durable handlers count
        against ``max_in_flight`` with everything else, so an entry taken waits here for
        a slot before it starts (:meth:`_handle_in_turn`). Reading more than the free
        slots makes fewer, larger reads, for this process and the server; no more than
        a service's worth waits, so that other members take their share of a backlog.
        """
        free = self._free_slots()
        if free <= 0:
            return 0
        return min(self._own_room(), free + self.runtime.admission.capacity)

    def _free_slots(self) -> int:
        admission = self.runtime.admission
        return admission.capacity - admission.active

    def _own_room(self) -> int:
        running_here = len(self.held) - len(self.retry_at) - self.acking
        return min(PREFETCH - running_here, MAX_HELD - len(self.held))

    async def _wait_for_room(self, wait_ms: int) -> None:
        """Wait until this consumer releases an entry, or the service frees a slot."""
        if self._own_room() > 0:
            # The service's slots are full, with work that is not this consumer's: it
            # does not say when a slot frees, so look again shortly.
            wait_ms = min(wait_ms, _FULL_PAUSE_MS)
        self._freed.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._freed.wait(), wait_ms / 1000)

    def _wait_ms(self) -> int:
        """How long a read may wait for new entries."""
        return _READ_BLOCK_MS

    async def _retry(self, entry_id: str) -> None:
        self.retry_at.pop(entry_id, None)
        try:
            taken = await self.transport.stream_claim(
                self.stream, self.group, self.name, [entry_id]
            )
        except TransportError as exc:
            # Left pending: taken again once it has been idle for min_idle_time.
            self.release(entry_id)
            logger.warning(
                "taking durable entry %s of %r again failed: %s", entry_id, self.stream, exc
            )
            return
        if not taken:
            self.release(entry_id)  # trimmed away meanwhile: nothing left to run
            return
        self._take(taken)

    def _take(self, entries: list[StreamEntry]) -> None:
        if not entries:
            return
        for entry in entries:
            self.held[entry.id] = entry.deliveries
        self.runtime.admission.track(start_task(self.loop, self._handle_in_turn(entries, 0)))
        self._start_keeping_claims()

    async def _handle_in_turn(self, entries: list[StreamEntry], first: int) -> None:
        """Handle ``entries[first:]`` one after the other in this task, until one waits.

        As broadcasts are (:meth:`.broadcasts.Broadcasts.handle_queued`): a task of its
        own for each entry would cost much of a listener's time per message, and most
        handlers finish without waiting. The first entry that waits is seen through by
        this task, which is then its own from start to end (``asyncio.current_task()``,
        timeouts and cancellation work in a handler), and a new task takes the rest,
        so the entries still run side by side. Each waits for a slot of the service.
        """
        admission = self.runtime.admission
        for index in range(first, len(entries)):
            if self._free_slots() <= 0 and not await self._wait_for_slot(entries[index:]):
                return
            admission.tasks += 1  # _handle_one() ends with task_done()
            try:
                stepped = first_step(self._handle_one(entries[index]))
            except BaseException:  # CancelledError or KeyboardInterrupt: as from its own task
                self._hand_over(entries, index + 1)
                raise
            if stepped is not None:
                self._hand_over(entries, index + 1)
                await finish(stepped)
                return

    async def _wait_for_slot(self, waiting: list[StreamEntry]) -> bool:
        """Wait for a slot of the service; False if it stops first.

        Then the entries ``waiting`` are held no more, left pending for another member:
        a stopping service starts nothing more.
        """
        try:
            while self._free_slots() <= 0:
                if self.runtime.admission.stopping:
                    for entry in waiting:
                        self.release(entry.id)
                    return False
                # This consumer's entries say when they end; other messages do not, so
                # look again shortly.
                self._freed.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._freed.wait(), _FULL_PAUSE_MS / 1000)
        except BaseException:  # cancelled: left pending as well
            for entry in waiting:
                self.release(entry.id)
            raise
        return True

    def _hand_over(self, entries: list[StreamEntry], first: int) -> None:
        """A new task takes ``entries[first:]``.

        A plain task, not an eager one: started inside this task, an eager one would
        run its first step nested in this one's, and a run of entries that each wait
        would nest as deep as the batch is long.
        """
        if first < len(entries):
            task = self.loop.create_task(self._handle_in_turn(entries, first))
            self.runtime.admission.track(task)

    def _start_keeping_claims(self) -> None:
        if self.held and (self.keeper is None or self.keeper.done()):
            self.keeper = self.loop.create_task(self._keep_claims(), name=f"claims {self}")

    async def _handle_one(self, entry: StreamEntry) -> None:
        try:
            await self.handle(entry)
        except TransportError as exc:
            # Left pending: taken again once it has been idle for min_idle_time.
            self.release(entry.id)
            logger.warning("durable entry %s of %r: %s", entry.id, self.stream, exc)
        except (asyncio.CancelledError, KeyboardInterrupt):
            self.release(entry.id)  # left pending: another member takes it
            raise
        except Exception as exc:
            # A bug of ours, or an entry nobody foresaw: left pending, it comes back
            # after min_idle_time with one more delivery, until it is given up on.
            self.release(entry.id)
            self.runtime.throttle.log(
                logging.ERROR,
                f"durable entry {self.stream}",
                "handling durable entry %s of %r failed",
                entry.id,
                self.stream,
                exc_info=exc,
            )
        finally:
            self.runtime.admission.task_done()

    # -- after handling --------------------------------------------------------------
    async def ack(self, entry_id: str) -> None:
        """Acknowledge an entry, and hold it no more.

        The entries handled in one turn of the loop are acknowledged together, in one
        ``XACK``. An acknowledgement the server does not take is sent again for a few
        seconds (a server restarting, or loading its data): each one lost makes the
        entry run again elsewhere.
        """
        await asyncio.shield(self._batch_ack(entry_id))

    def ack_soon(self, entry_id: str) -> None:
        """Acknowledge an entry with this turn's others, without waiting for the server.

        The entry is held until the ``XACK`` is answered. A failure is logged, and the
        entry left pending, to be taken again once idle: at least once still holds.
        """
        self._batch_ack(entry_id)

    def _batch_ack(self, entry_id: str) -> asyncio.Future[None]:
        """Add the entry to this turn's ``XACK``; the future of that ``XACK``."""
        if self._acks is None:
            done = self.loop.create_future()
            done.add_done_callback(_retrieve)
            self._acks = ([], done)
            self.runtime.keep(self.loop.create_task(self._send_acks()))
        ids, done = self._acks
        ids.append(entry_id)
        self.acking += 1
        return done

    async def _send_acks(self) -> None:
        """Acknowledge the entries of this turn of the loop in one ``XACK``, then free them."""
        await asyncio.sleep(0)  # the handlers finishing in this turn add theirs first
        assert self._acks is not None
        (ids, done), self._acks = self._acks, None
        try:
            for pause in (*_ACK_PAUSES, None):
                try:
                    await self.transport.stream_ack(
                        self.stream, self.group, ids, delete=self.delete_when_done
                    )
                except TransportError as exc:
                    if pause is None:
                        done.set_exception(exc)
                        logger.warning(
                            "acknowledging %d entries of %r failed: %s", len(ids), self.stream, exc
                        )
                        return
                    await asyncio.sleep(pause)
                else:
                    done.set_result(None)
                    return
        finally:
            self.acking -= len(ids)
            for entry_id in ids:
                self.release(entry_id)

    def retry_later(self, entry_id: str, delay: float) -> None:
        """Take the entry again (counting a delivery) once ``delay`` seconds have passed."""
        self.retry_at[entry_id] = self.loop.call_later(
            delay, lambda: self.runtime.keep(self.loop.create_task(self._retry(entry_id)))
        )
        self._freed.set()  # it no longer runs: room for another

    def release(self, entry_id: str) -> None:
        """Hold an entry no more, leaving it where it is (pending, or acknowledged)."""
        self.held.pop(entry_id, None)
        timer = self.retry_at.pop(entry_id, None)
        if timer is not None:
            timer.cancel()
        self._freed.set()

    def is_for_another_group(self, entry: StreamEntry) -> bool:
        """Whether the entry is a dead letter replayed for another group of the stream."""
        target = entry.fields.get(protocol.STREAM_GROUP_FIELD)
        return target is not None and target != self.group.encode()

    # -- claims ----------------------------------------------------------------------
    async def _keep_claims(self) -> None:
        """Reset the idle time of every entry held, so no other member takes it.

        Runs while anything is held: an idle consumer does not wake up for it.
        """
        every = self.min_idle_time / 3
        while self.held:
            await asyncio.sleep(every)
            if not self.held:
                return
            try:
                await self.transport.stream_claim(
                    self.stream, self.group, self.name, list(self.held), touch=True
                )
            except TransportError as exc:
                self.runtime.throttle.log(
                    logging.WARNING if self.transport.receiving else logging.DEBUG,
                    f"durable claims {self.stream}",
                    "extending the claims on %r failed: %s",
                    self.stream,
                    exc,
                )


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a batch's failure as seen: its waiters may all have been cancelled."""
    if not future.cancelled():
        future.exception()
