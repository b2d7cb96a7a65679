"""The server's clock, as seen from a client: learned from ``TIME``, kept by ours.

Times kept on the server (membership expiries, the ids of stream entries) are the
server's; a client whose host clock is off by seconds would misjudge them with its own.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["ServerClock"]

#: How long a reading is trusted: clocks drift apart, and a server may fail over to
#: another host with a clock of its own.
_TRUSTED_FOR = 60.0


class ServerClock:
    """A server's time, from the last ``TIME`` reply plus the time elapsed here since.

    Elapsed time is read on the monotonic clock, so a jump of this host's wall clock
    changes nothing; and since a reply is read a little after the server wrote it, the
    estimate is never ahead of the server's time, only behind by the reply's travel.
    """

    __slots__ = ("_reading",)

    def __init__(self) -> None:
        # (the server's ms, our monotonic seconds then): one attribute, so that a thread
        # reading it never pairs one reply's time with another's moment.
        self._reading: tuple[int, float] | None = None

    def learn(self, reply: Any) -> None:
        """Take the server's time from the reply of ``TIME`` (seconds and microseconds)."""
        seconds, micros = reply
        self._reading = (int(seconds) * 1000 + int(micros) // 1000, time.monotonic())

    def now_ms(self) -> int | None:
        """Now on the server's clock, in ms; None if not learned lately (send ``TIME``)."""
        reading = self._reading
        if reading is None:
            return None
        server_ms, learned_at = reading
        elapsed = time.monotonic() - learned_at
        if elapsed > _TRUSTED_FOR:
            return None
        return server_ms + int(elapsed * 1000)
