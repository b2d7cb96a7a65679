"""The server's clock, as seen from a client: ours plus an offset learned from ``TIME``.

Times kept on the server (membership expiries, the ids of stream entries) are the
server's; a client whose host clock is off by seconds would misjudge them with its own.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["ServerClock"]

#: How long an offset is trusted: hosts' clocks drift, and a server may fail over to
#: another host with a clock of its own.
_TRUSTED_FOR = 60.0


class ServerClock:
    """The offset of a server's clock from this process's, once a ``TIME`` reply told it."""

    __slots__ = ("_learned_at", "_offset_ms")

    def __init__(self) -> None:
        self._offset_ms: int | None = None
        self._learned_at = 0.0

    def learn(self, reply: Any) -> None:
        """Take the offset from the reply of ``TIME`` (seconds and microseconds)."""
        seconds, micros = reply
        server_ms = int(seconds) * 1000 + int(micros) // 1000
        self._offset_ms = server_ms - int(time.time() * 1000)
        self._learned_at = time.monotonic()

    def now_ms(self) -> int | None:
        """Now on the server's clock, in ms; None if not learned lately (send ``TIME``)."""
        offset = self._offset_ms
        if offset is None or time.monotonic() - self._learned_at > _TRUSTED_FOR:
            return None
        return int(time.time() * 1000) + offset
