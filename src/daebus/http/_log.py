"""What :class:`~daebus.DaebusHttp` logs about its clients, so that no client can flood the log.

aiohttp answers a request it cannot parse with 400 itself, and logs it at ERROR with a
traceback quoting the client's bytes: any client could fill the service's log. The
request handlers take :class:`ServerLog` as their ``logger`` (aiohttp's documented
option) instead. It turns such a request into one brief INFO line, at most one a
period; everything else aiohttp logs reaches ``aiohttp.server`` unchanged.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

from aiohttp.http import HttpProcessingError

__all__ = ["ServerLog", "Throttle", "brief"]

#: Characters of a client's text kept in a log line.
_BRIEF = 80

if TYPE_CHECKING:
    _Adapter = logging.LoggerAdapter[logging.Logger]
else:  # subscriptable at run time from Python 3.11 only
    _Adapter = logging.LoggerAdapter


class Throttle:
    """Lets one log line through per ``every`` seconds and counts the ones held back."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._last = -math.inf
        self._held = 0

    def allow(self) -> int | None:
        """None if this line is to be held back, else how many were held back before it."""
        now = time.monotonic()
        if now - self._last < self.every:
            self._held += 1
            return None
        self._last = now
        held, self._held = self._held, 0
        return held


def brief(text: object) -> str:
    """``text``'s first line, printable and cut short: what a log line may quote of a client."""
    line = str(text).strip().split("\n", 1)[0].rstrip(":")
    line = "".join(char if char.isprintable() else "?" for char in line)
    return line if len(line) <= _BRIEF else line[: _BRIEF - 3] + "..."


class ServerLog(_Adapter):
    """The ``logger`` of aiohttp's request handlers: malformed requests in brief, throttled.

    A request aiohttp refused as malformed gives one INFO line on ``logger`` naming the
    client and the reason, at most one per ``every`` seconds (the next one says how many
    were left out). Anything else goes to ``aiohttp.server`` as aiohttp wrote it.
    """

    def __init__(self, logger: logging.Logger, every: float) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self.component_logger = logger
        self._throttle = Throttle(every)

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            # aiohttp's message is "Error handling request from %s", the client's address.
            self._malformed(exc, args[0] if len(args) == 1 else None)
        else:
            super().log(level, msg, *args, **kwargs)

    def _malformed(self, exc: HttpProcessingError, remote: object) -> None:
        held = self._throttle.allow()
        if held is None:
            return
        self.component_logger.info(
            "malformed HTTP request from %s answered %d: %s%s",
            remote or "a client",
            exc.code or 400,
            brief(exc.message or type(exc).__name__),
            f" ({held} more since the last such line)" if held else "",
        )
