"""The consumer-group commands of durable channels, as every Redis transport sends them.

Creating a group, acknowledging, claiming, leaving, and reading what is pending name
one stream each: a single node and a cluster (which routes each to its stream's shard)
send them alike, through the two means below. What differs between them (adding to a
stream, waiting on ``XREADGROUP ... BLOCK``) stays in :mod:`._redis_streams` and
:mod:`._cluster_streams`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

from ..exceptions import TransportError
from ._streams import entries_of
from .base import Reclaimed, StreamEntry, Transport

__all__ = ["Command", "StreamGroups"]

#: A command and its arguments.
Command = tuple[str | bytes | int, ...]


class StreamGroups(Transport):
    """The group commands of a transport that can send one command, or several at once."""

    @abstractmethod
    async def _command(self, *args: str | bytes | int) -> Any:
        """One command; its reply (an error reply raises TransportError)."""

    @abstractmethod
    async def _pipeline(self, *commands: Command) -> list[Any]:
        """Several commands sent together; their replies in order (the first error raised)."""

    async def stream_create_group(self, stream: str, group: str, start: str) -> bool:
        """``XGROUP CREATE ... MKSTREAM``; a BUSYGROUP refusal means it existed."""
        try:
            await self._command("XGROUP", "CREATE", stream, group, start, "MKSTREAM")
        except TransportError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise
        return True

    async def stream_ack(
        self, stream: str, group: str, ids: Sequence[str], *, delete: bool = False
    ) -> int:
        """``XACK stream group ids...`` [and ``XDEL stream ids...``] (none: 0, unasked)."""
        if not ids:
            return 0
        if not delete:
            return int(await self._command("XACK", stream, group, *ids))
        acked, _deleted = await self._pipeline(
            ("XACK", stream, group, *ids), ("XDEL", stream, *ids)
        )
        return int(acked)

    async def stream_claim(
        self, stream: str, group: str, consumer: str, ids: Sequence[str], *, touch: bool = False
    ) -> list[StreamEntry]:
        """``XCLAIM stream group consumer 0 ids... [JUSTID]`` (none: nothing to take)."""
        if not ids:
            return []
        if touch:
            await self._command("XCLAIM", stream, group, consumer, 0, *ids, "JUSTID")
            return []
        reply = await self._command("XCLAIM", stream, group, consumer, 0, *ids)
        return await self._with_deliveries(stream, group, entries_of(reply))

    async def stream_leave_group(self, stream: str, group: str, consumer: str) -> bool:
        """``XPENDING stream group - + 1 consumer``, then ``XGROUP DELCONSUMER`` if none."""
        if await self._command("XPENDING", stream, group, "-", "+", 1, consumer):
            return False
        await self._command("XGROUP", "DELCONSUMER", stream, group, consumer)
        return True

    async def stream_pending_elsewhere(self, stream: str, group: str, consumer: str) -> int:
        """``XPENDING stream group``: the counts of the members other than ``consumer``."""
        reply = await self._command("XPENDING", stream, group)
        members = reply[3] if reply and len(reply) > 3 and reply[3] else []
        return sum(int(count) for name, count in members if bytes(name).decode() != consumer)

    async def stream_autoclaim(
        self,
        stream: str,
        group: str,
        consumer: str,
        min_idle_ms: int,
        count: int,
        *,
        start: str = "0-0",
    ) -> Reclaimed:
        """``XAUTOCLAIM ... start COUNT count`` (Redis 6.2 and later)."""
        reply = await self._command(
            "XAUTOCLAIM", stream, group, consumer, min_idle_ms, start, "COUNT", count
        )
        entries = await self._with_deliveries(stream, group, entries_of(reply[1]))
        return Reclaimed(entries, bytes(reply[0]).decode())

    async def _with_deliveries(
        self, stream: str, group: str, entries: list[StreamEntry]
    ) -> list[StreamEntry]:
        """The entries with their delivery counts, read from ``XPENDING`` in one round trip.

        An entry no longer pending when asked (another member acknowledged it between
        the two commands) is left out: it is done with.
        """
        if not entries:
            return entries
        pending = await self._pipeline(
            *(("XPENDING", stream, group, e.id, e.id, 1) for e in entries)
        )
        return [
            entry._replace(deliveries=int(rows[0][3]))
            for entry, rows in zip(entries, pending, strict=True)
            if rows
        ]
