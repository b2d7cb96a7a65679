"""Messages per channel: a bounded table of counts, and rates taken once a second.

Anyone who can publish can make up channel names without end, so the table is held to
a size: reply channels (one per caller, ``caller:<uuid4>``) are one row, a name too
long is cut (names cut alike share a row), and once :data:`MAX_CHANNELS` rows exist a
new channel is counted in the overflow row until an idle row is forgotten.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import protocol

__all__ = ["MAX_CHANNELS", "OVERFLOW", "REPLIES", "TrafficTable"]

#: The most channels counted one by one; past it, new ones go to the overflow row.
MAX_CHANNELS = 500
#: The row of every reply channel (``caller:*``, ``caller_*``, ``*.responses``).
REPLIES = "(reply channels)"
#: The row of channels that found the table full.
OVERFLOW = "(other channels)"
#: Seconds a channel may stay silent before its row is forgotten.
FORGET_AFTER = 300.0
#: The longest channel name kept as it is; longer ones are cut (see protocol.shorten).
NAME_LIMIT = protocol.FIELD_LIMIT


@dataclass
class _Row:
    messages: int = 0
    bytes: int = 0
    #: Messages counted at the last tick: the rate is what came since.
    at_tick: int = 0
    rate: float = 0.0
    last: float = 0.0


class TrafficTable:
    """Counts of messages and bytes per channel, with a rate per second at each tick."""

    def __init__(self, max_channels: int = MAX_CHANNELS) -> None:
        self.max_channels = max_channels
        self._rows: dict[str, _Row] = {}
        self._last_tick: float | None = None
        #: Messages per second on every channel, at the last tick.
        self.rate = 0.0
        self.messages = 0

    def __len__(self) -> int:
        return len(self._rows)

    def count(self, channel: str, size: int, now: float) -> str:
        """Count one message of ``size`` bytes on ``channel``; the row it went to."""
        name = row_name(channel)
        row = self._rows.get(name)
        if row is None:
            if len(self._rows) >= self.max_channels and name not in (REPLIES, OVERFLOW):
                name = OVERFLOW
                row = self._rows.get(name)
            if row is None:
                row = self._rows[name] = _Row()
        row.messages += 1
        row.bytes += size
        row.last = now
        self.messages += 1
        return name

    def tick(self, now: float) -> None:
        """Take each row's rate since the last tick; forget rows silent for long."""
        elapsed = None if self._last_tick is None else now - self._last_tick
        self._last_tick = now
        total = 0.0
        for name, row in list(self._rows.items()):
            fresh = row.messages - row.at_tick
            row.at_tick = row.messages
            row.rate = fresh / elapsed if elapsed and elapsed > 0 else 0.0
            total += row.rate
            if now - row.last > FORGET_AFTER:
                del self._rows[name]
        self.rate = total

    def rows(self, services: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
        """Each row, busiest first: channel, kind, rate, messages, bytes, seconds idle."""
        found: list[dict[str, Any]] = []
        for name, row in self._rows.items():
            if name == REPLIES:
                kind = "reply"
            elif name == OVERFLOW:
                kind = "overflow"
            else:
                kind = protocol.channel_kind(name, services)
            found.append(
                {
                    "channel": name,
                    "kind": kind,
                    "rate": round(row.rate, 2),
                    "messages": row.messages,
                    "bytes": row.bytes,
                    "last": row.last,
                }
            )
        found.sort(key=lambda r: (-r["rate"], -r["messages"], r["channel"]))
        return found


def row_name(channel: str) -> str:
    """The row a channel is counted in: its name, cut if long, or :data:`REPLIES`."""
    if protocol.channel_kind(channel) == "reply":
        return REPLIES
    if len(channel) > NAME_LIMIT or not channel.isprintable():
        return protocol.shorten(channel, NAME_LIMIT)
    return channel
