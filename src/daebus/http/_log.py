"""What :class:`~daebus.DaebusHttp` logs about its clients, so that no client can flood the log.

aiohttp answers a request it cannot parse with 400 itself, and logs it at ERROR with a
traceback quoting the client's bytes: any client could fill the service's log. The
request handlers take :class:`ServerLog` as their ``logger`` (aiohttp's documented
option) instead. It turns such a request into one brief INFO line, at most one a
period (then a count, through the run's
:class:`~daebus.runtime.throttle.LogThrottle`); everything else aiohttp logs reaches
``aiohttp.server`` unchanged.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiohttp.http import HttpProcessingError

from ..runtime.throttle import LogThrottle

__all__ = ["ServerLog", "brief"]

#: Characters of a client's text kept in a log line.
_BRIEF = 80

if TYPE_CHECKING:
    _Adapter = logging.LoggerAdapter[logging.Logger]
else:  # subscriptable at run time from Python 3.11 only
    _Adapter = logging.LoggerAdapter


def brief(text: object) -> str:
    """``text``'s first line, printable and cut short: what a log line may quote of a client."""
    line = str(text).strip().split("\n", 1)[0].rstrip(":")
    line = "".join(char if char.isprintable() else "?" for char in line)
    return line if len(line) <= _BRIEF else line[: _BRIEF - 3] + "..."


class ServerLog(_Adapter):
    """The ``logger`` of aiohttp's request handlers: malformed requests in brief, throttled.

    A request aiohttp refused as malformed gives one INFO line on ``logger`` naming the
    client and the reason, at most one a ``throttle`` period (then how many more there
    were). Anything else goes to ``aiohttp.server`` as aiohttp wrote it.
    """

    def __init__(self, logger: logging.Logger, throttle: LogThrottle) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self.component_logger = logger
        self._throttle = throttle

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            # aiohttp's message is "Error handling request from %s", the client's address.
            self._malformed(exc, args[0] if len(args) == 1 else None)
        else:
            super().log(level, msg, *args, **kwargs)

    def _malformed(self, exc: HttpProcessingError, remote: object) -> None:
        self._throttle.log(
            logging.INFO,
            "malformed",
            "malformed HTTP request from %s answered %d: %s",
            remote or "a client",
            exc.code or 400,
            brief(exc.message or type(exc).__name__),
            logger=self.component_logger,
        )
