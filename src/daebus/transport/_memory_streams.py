"""Streams for the memory transport: Redis's stream commands, in process.

What durable channels use of ``XADD``, ``XGROUP CREATE``, ``XREADGROUP``, ``XACK``,
``XCLAIM`` and ``XAUTOCLAIM``, with their semantics: every group gets every entry,
each entry handed out goes on the pending list of the group (with its consumer, the
time it was handed out and its delivery count) until it is acknowledged, and trimming
the stream leaves pending entries that are gone to be dropped when claimed. Times are
the process's monotonic clock. Thread-safe: transports on any loop may share a broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import TransportError
from ._streams import parse_id
from .base import Reclaimed, StreamEntry

__all__ = ["MemoryStreams"]

Id = tuple[int, int]


@dataclass
class _Pending:
    consumer: str
    since: float  # monotonic seconds: when it was last handed out or claimed
    deliveries: int


@dataclass
class _Group:
    last: Id
    pending: dict[Id, _Pending] = field(default_factory=dict)
    consumers: set[str] = field(default_factory=set)  # every consumer that read or claimed


@dataclass
class _Stream:
    entries: dict[Id, dict[str, bytes]] = field(default_factory=dict)  # in id order
    last: Id = (0, 0)
    groups: dict[str, _Group] = field(default_factory=dict)


class MemoryStreams:
    """The streams of one memory broker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: dict[str, _Stream] = {}
        # Readers waiting for an entry: each is woken on its own loop.
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}

    def add(
        self, stream: str, fields: dict[str, bytes], maxlen: int, max_age_ms: int | None = None
    ) -> str:
        """``XADD stream MAXLEN maxlen * fields``, then ``XTRIM stream MINID <now - max_age_ms>``.

        Trimmed exactly, which ``~`` allows. Ids and ages are on the wall clock, as a
        server's are on its own.
        """
        with self._lock:
            entries = self._streams.setdefault(stream, _Stream())
            ms = int(time.time() * 1000)
            last = entries.last
            new = (ms, 0) if ms > last[0] else (last[0], last[1] + 1)
            entries.entries[new] = dict(fields)
            entries.last = new
            _trim(entries, maxlen, None if max_age_ms is None else (ms - max_age_ms, 0))
            waiters = self._waiters.pop(stream, [])
        for loop, waiter in waiters:
            with contextlib.suppress(RuntimeError):  # its loop has closed: nobody waits
                loop.call_soon_threadsafe(_wake, waiter)
        return f"{new[0]}-{new[1]}"

    def create_group(self, stream: str, group: str, start: str) -> bool:
        """``XGROUP CREATE stream group start MKSTREAM``."""
        with self._lock:
            entries = self._streams.setdefault(stream, _Stream())
            if group in entries.groups:
                return False
            try:
                last = entries.last if start == "$" else parse_id(start)
            except ValueError:
                raise TransportError(f"ERR Invalid stream ID {start!r}") from None
            entries.groups[group] = _Group(last)
            return True

    def _group(self, stream: str, group: str) -> tuple[_Stream, _Group]:
        entries = self._streams.get(stream)
        if entries is None or group not in entries.groups:
            raise TransportError(f"NOGROUP No such key {stream!r} or consumer group {group!r}")
        return entries, entries.groups[group]

    def read_now(self, stream: str, group: str, consumer: str, count: int) -> list[StreamEntry]:
        """``XREADGROUP ... COUNT count STREAMS stream >`` without waiting."""
        with self._lock:
            entries, state = self._group(stream, group)
            now = time.monotonic()
            found: list[StreamEntry] = []
            for entry_id, fields in entries.entries.items():
                if len(found) >= count:
                    break
                if entry_id > state.last:
                    state.consumers.add(consumer)
                    state.last = entry_id
                    state.pending[entry_id] = _Pending(consumer, now, 1)
                    found.append(StreamEntry(f"{entry_id[0]}-{entry_id[1]}", dict(fields), 1))
            return found

    async def read(
        self, stream: str, group: str, consumer: str, count: int, block_ms: int
    ) -> list[StreamEntry]:
        """``XREADGROUP ... BLOCK block_ms``: waits up to ``block_ms`` for an entry."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + block_ms / 1000
        while True:
            waiter: asyncio.Future[None] = loop.create_future()
            with self._lock:  # registered before reading: an add in between wakes it
                self._waiters.setdefault(stream, []).append((loop, waiter))
            found = self.read_now(stream, group, consumer, count)
            remaining = deadline - loop.time()
            if found or remaining <= 0:
                return found
            try:
                await asyncio.wait_for(waiter, remaining)
            except asyncio.TimeoutError:
                return []

    def ack(self, stream: str, group: str, ids: Sequence[str], delete: bool = False) -> int:
        """``XACK``, then ``XDEL`` if ``delete``."""
        with self._lock:
            entries = self._streams.get(stream)
            state = entries.groups.get(group) if entries is not None else None
            acked = 0
            if state is not None:
                acked = sum(state.pending.pop(parse_id(i), None) is not None for i in ids)
            if delete and entries is not None:
                for entry_id in ids:
                    entries.entries.pop(parse_id(entry_id), None)
            return acked

    def claim(
        self, stream: str, group: str, consumer: str, ids: Sequence[str], touch: bool
    ) -> list[StreamEntry]:
        """``XCLAIM stream group consumer 0 ids... [JUSTID]``."""
        if not ids:
            return []  # the Redis transport sends no command then
        with self._lock:
            entries, state = self._group(stream, group)
            return self._take(entries, state, consumer, [parse_id(i) for i in ids], touch)

    def leave_group(self, stream: str, group: str, consumer: str) -> bool:
        """Forget ``consumer`` of ``group`` if it holds no pending entry."""
        with self._lock:
            _entries, state = self._group(stream, group)
            if any(pending.consumer == consumer for pending in state.pending.values()):
                return False
            state.consumers.discard(consumer)
            return True

    def pending_elsewhere(self, stream: str, group: str, consumer: str) -> int:
        """How many pending entries of ``group`` members other than ``consumer`` hold."""
        with self._lock:
            _entries, state = self._group(stream, group)
            return sum(pending.consumer != consumer for pending in state.pending.values())

    def autoclaim(
        self,
        stream: str,
        group: str,
        consumer: str,
        min_idle_ms: int,
        count: int,
        start: str = "0-0",
    ) -> Reclaimed:
        """``XAUTOCLAIM stream group consumer min_idle_ms start COUNT count``."""
        low = parse_id(start)
        with self._lock:
            entries, state = self._group(stream, group)
            oldest = time.monotonic() - min_idle_ms / 1000
            # As Redis scans: in id order, looking at count * 10 entries at most; one
            # deleted meanwhile leaves the pending list at once, idle or not, and uses
            # up one of the count. The next look starts at the first entry not seen.
            idle: list[Id] = []
            attempts = count * 10
            next_start = "0-0"
            for entry_id, pending in sorted(state.pending.items()):
                if entry_id < low:
                    continue
                if count <= 0 or attempts <= 0:
                    next_start = f"{entry_id[0]}-{entry_id[1]}"
                    break
                attempts -= 1
                if entry_id not in entries.entries:
                    del state.pending[entry_id]
                    count -= 1
                elif pending.since <= oldest:
                    idle.append(entry_id)
                    count -= 1
            return Reclaimed(self._take(entries, state, consumer, idle, False), next_start)

    @staticmethod
    def _take(
        entries: _Stream, state: _Group, consumer: str, ids: list[Id], touch: bool
    ) -> list[StreamEntry]:
        now = time.monotonic()
        taken: list[StreamEntry] = []
        for entry_id in ids:
            pending = state.pending.get(entry_id)
            if pending is None:
                continue
            fields = entries.entries.get(entry_id)
            if fields is None:  # trimmed away while pending: as Redis 7 does
                del state.pending[entry_id]
                continue
            pending.consumer, pending.since = consumer, now
            state.consumers.add(consumer)
            if not touch:
                pending.deliveries += 1
                name = f"{entry_id[0]}-{entry_id[1]}"
                taken.append(StreamEntry(name, dict(fields), pending.deliveries))
        return taken

    def length(self, stream: str) -> int:
        """``XLEN``."""
        with self._lock:
            entries = self._streams.get(stream)
            return 0 if entries is None else len(entries.entries)

    def entries(self, stream: str) -> list[StreamEntry]:
        """``XRANGE stream - +`` (delivery counts 0): for tests and tools."""
        with self._lock:
            entries = self._streams.get(stream)
            items = list(entries.entries.items()) if entries is not None else []
        return [StreamEntry(f"{i[0]}-{i[1]}", dict(f), 0) for i, f in items]

    # -- for tools: dead letters and health (see daebus.dead_letters, daebus.health) --
    def names(self) -> list[str]:
        """The streams that exist (``SCAN``): those added to, or given a group."""
        with self._lock:
            return list(self._streams)

    def range(self, stream: str, start: str, end: str, count: int | None) -> list[StreamEntry]:
        """``XRANGE stream start end [COUNT count]`` (``-`` and ``+`` for either end)."""
        low = (0, 0) if start == "-" else parse_id(start)
        high = (1 << 64, 0) if end == "+" else _end_id(end)
        with self._lock:
            entries = self._streams.get(stream)
            found: list[StreamEntry] = []
            for entry_id, fields in entries.entries.items() if entries is not None else ():
                if entry_id > high or (count is not None and len(found) >= count):
                    break
                if entry_id >= low:
                    found.append(StreamEntry(f"{entry_id[0]}-{entry_id[1]}", dict(fields), 0))
            return found

    def delete(self, stream: str, ids: Sequence[str]) -> int:
        """``XDEL stream ids...``: how many entries were deleted."""
        with self._lock:
            entries = self._streams.get(stream)
            if entries is None:
                return 0
            return sum(entries.entries.pop(parse_id(i), None) is not None for i in ids)

    def remove(self, stream: str) -> int:
        """``DEL stream``, its groups with it: how many entries it held."""
        with self._lock:
            entries = self._streams.pop(stream, None)
            return 0 if entries is None else len(entries.entries)

    def groups(self, stream: str) -> list[dict[str, Any]]:
        """``XINFO GROUPS stream``, with Redis's keys; the lag is always known here."""
        with self._lock:
            entries = self._streams.get(stream)
            if entries is None:
                return []
            return [
                {
                    "name": name,
                    "consumers": len(state.consumers),
                    "pending": len(state.pending),
                    "last-delivered-id": f"{state.last[0]}-{state.last[1]}",
                    "lag": sum(1 for entry_id in entries.entries if entry_id > state.last),
                }
                for name, state in entries.groups.items()
            ]


def _end_id(entry_id: str) -> Id:
    """The upper end of a range: ``"<ms>"`` alone means every sequence of that ms."""
    ms, sep, _ = entry_id.partition("-")
    return parse_id(entry_id) if sep else (int(ms), 1 << 64)


def _trim(entries: _Stream, maxlen: int, oldest: Id | None) -> None:
    """Drop the entries past the last ``maxlen``, and those with ids below ``oldest``.

    Pending entries that go stay on their groups' pending lists, as on Redis: a claim
    drops them.
    """
    kept = entries.entries
    while kept:
        first = next(iter(kept))
        if len(kept) <= maxlen and (oldest is None or first >= oldest):
            return
        del kept[first]


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
