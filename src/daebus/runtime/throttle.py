"""Log lines that a flood of bad or excess messages cannot multiply.

Anyone who can publish to a service's channels, or reach its HTTP port, can make it
refuse, drop or fail on every message. Logging each one would let them fill the disk,
so a :class:`LogThrottle` logs the first line of a kind at once, counts the ones like
it for a while, then logs how many there were. The service runtime has one, and so
has each run of a :class:`~daebus.DaebusHttp`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

__all__ = ["LogThrottle"]

#: Kinds of line followed at once; past that, new kinds share one count.
_MAX_KINDS = 100
_OTHERS = "(other kinds)"


class _Kind:
    __slots__ = ("count", "last", "level", "line", "logger", "since")

    def __init__(self, line: str, level: int, logger: logging.Logger) -> None:
        self.line = line
        self.level = level
        self.logger = logger
        self.count = 0
        self.since = time.monotonic()
        # The latest line held back, unformatted: formatted only if it is reported.
        self.last: tuple[str, tuple[Any, ...]] | None = None


class LogThrottle:
    """At most one line per kind and ``period`` seconds, then a count of the rest.

    Usable from any thread; the counts are logged from ``loop`` when each period ends.
    """

    def __init__(
        self, logger: logging.Logger, loop: asyncio.AbstractEventLoop, period: float = 10.0
    ) -> None:
        self._logger = logger
        self._loop = loop
        self.period = period
        self._kinds: dict[str, _Kind] = {}
        self._lock = threading.Lock()

    def log(
        self,
        level: int,
        kind: str,
        msg: str,
        *args: Any,
        exc_info: BaseException | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        """Log ``msg % args`` unless a line of ``kind`` went out less than a period ago.

        ``kind`` names what the lines have in common (say, the action that failed);
        lines of one kind that are held back are counted and reported together, on
        ``logger`` (by default the throttle's) like the line that went out.
        """
        if logger is None:
            logger = self._logger
        with self._lock:
            entry = self._kinds.get(kind)
            if entry is None and len(self._kinds) >= _MAX_KINDS:
                kind = _OTHERS
                entry = self._kinds.get(kind)
            if entry is not None:
                entry.count += 1
                entry.last = (msg, args)
                return
            line = msg % args if args else msg
            self._kinds[kind] = _Kind(line, level, logger)
        logger.log(level, "%s", line, exc_info=exc_info, stacklevel=2)
        try:
            self._loop.call_soon_threadsafe(self._loop.call_later, self.period, self._tally, kind)
        except RuntimeError:  # the loop is closed: nothing more will be counted
            with self._lock:
                self._kinds.pop(kind, None)

    def _tally(self, kind: str) -> None:
        """A period of ``kind`` ended: log how many lines were held back, if any."""
        with self._lock:
            entry = self._kinds.get(kind)
            if entry is None:
                return
            count, entry.count = entry.count, 0
            if not count:
                del self._kinds[kind]
                return
            self._report(entry, count)
            entry.since = time.monotonic()
        # Another period: a flood that goes on is reported once per period.
        self._loop.call_later(self.period, self._tally, kind)

    def _report(self, entry: _Kind, count: int) -> None:
        if entry.last is None:
            line = entry.line
        else:
            msg, args = entry.last
            try:
                line = msg % args if args else msg
            except (TypeError, ValueError):  # as logging would, rather than fail here
                line = f"{msg} {args!r}"
            entry.last = None
        entry.logger.log(
            entry.level,
            "%d more like this in the last %.0fs, the latest: %s",
            count,
            max(1.0, time.monotonic() - entry.since),
            line,
        )

    def flush(self) -> None:
        """Log every count still held back (at shutdown); forget every kind."""
        with self._lock:
            for entry in self._kinds.values():
                if entry.count:
                    self._report(entry, entry.count)
            self._kinds.clear()
