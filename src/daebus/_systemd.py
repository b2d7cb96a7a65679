"""Telling systemd how a service is doing: the ``sd_notify`` protocol, with no dependency.

Under a unit of ``Type=notify`` systemd sets ``$NOTIFY_SOCKET``, a unix datagram socket
(a path, or an abstract name written with a leading ``@``), and reads ``KEY=VALUE``
lines sent there. A service sends ``READY=1`` once it is subscribed (systemd then starts
the units ordered after it), ``STOPPING=1`` when it begins to drain, and ``STATUS=...``
lines that ``systemctl status`` shows. When the unit sets ``WatchdogSec=``, systemd also
sets ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``), and restarts the service unless it hears
``WATCHDOG=1`` that often: the service pings every half of it from its event loop, so a
loop that stalls stops the pings.

Outside systemd (no ``$NOTIFY_SOCKET``) nothing happens: no socket, no timer, no wake-up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

__all__ = [
    "ENV_NOTIFY_SOCKET",
    "ENV_WATCHDOG_PID",
    "ENV_WATCHDOG_USEC",
    "SHORTEST_PING",
    "Notifier",
]

logger = logging.getLogger("daebus.systemd")

ENV_NOTIFY_SOCKET = "NOTIFY_SOCKET"
ENV_WATCHDOG_USEC = "WATCHDOG_USEC"
ENV_WATCHDOG_PID = "WATCHDOG_PID"

#: Seconds between two watchdog pings at the least: a watchdog of a few microseconds
#: (a unit's typo) would otherwise keep the loop pinging without a pause.
SHORTEST_PING = 0.01

# systemd's notification socket has a large receive buffer and is read at once: a send
# never waits in practice. Bounded all the same, since it runs on the event loop.
_SEND_TIMEOUT = 1.0


class Notifier:
    """The notifications of one run of a service; does nothing when not under systemd.

    Args:
        address: ``$NOTIFY_SOCKET`` as systemd sets it, or None: then every method is a
            no-op.
        watchdog: seconds between two ``WATCHDOG=1``, or None for no watchdog.
    """

    def __init__(self, address: str | None, watchdog: float | None = None) -> None:
        self.address = address
        self.watchdog = watchdog if address else None
        self._timer: asyncio.TimerHandle | None = None
        self._failed = False

    def __repr__(self) -> str:
        if not self.address:
            return "<Notifier off>"
        return f"<Notifier {self.address} watchdog={self.watchdog}>"

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier systemd's environment variables describe (``os.environ`` by default).

        The watchdog is on when ``$WATCHDOG_USEC`` is a positive number of microseconds
        and ``$WATCHDOG_PID``, if set, is this process's pid: a child process inherits
        the variables, but the watchdog is its parent's to feed.
        """
        env = os.environ if environ is None else environ
        address = env.get(ENV_NOTIFY_SOCKET) or None
        if address is None:
            return cls(None)
        return cls(address, _watchdog_interval(env))

    @property
    def enabled(self) -> bool:
        """Whether there is a socket to notify (the process runs under systemd)."""
        return self.address is not None

    # -- the notifications -----------------------------------------------------------
    def notify(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; whether it was sent.

        Never raises: a failure is logged (as a warning the first time, then at debug).
        """
        if not self.address or not lines:
            return False
        # An abstract socket's name starts with a NUL byte, written '@' in the variable.
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.settimeout(_SEND_TIMEOUT)
            sock.sendto("\n".join(lines).encode("utf-8"), target)
        except OSError as exc:
            level = logging.DEBUG if self._failed else logging.WARNING
            self._failed = True
            logger.log(level, "cannot notify systemd at %s: %s", self.address, exc)
            return False
        finally:
            sock.close()
        return True

    def ready(self, status: str) -> None:
        """The service is subscribed and serving: ``READY=1``."""
        self.notify("READY=1", _status(status))

    def stopping(self, status: str) -> None:
        """The service begins to stop: ``STOPPING=1``."""
        self.notify("STOPPING=1", _status(status))

    def status(self, status: str) -> None:
        """A line for ``systemctl status``."""
        self.notify(_status(status))

    # -- the watchdog ----------------------------------------------------------------
    def start_watchdog(self, loop: asyncio.AbstractEventLoop) -> None:
        """Ping ``WATCHDOG=1`` from ``loop`` until :meth:`close`, when the unit asks for it.

        The ping runs as a callback of the loop: a loop that stops turning stops it.
        """
        if self.watchdog is None or self._timer is not None:
            return
        logger.info("systemd watchdog: pinging every %.3gs", self.watchdog)
        self._ping(loop)

    def _ping(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.watchdog is not None
        self.notify("WATCHDOG=1")
        self._timer = loop.call_later(self.watchdog, self._ping, loop)

    def close(self) -> None:
        """Stop the watchdog's pings (the run is over)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _status(text: str) -> str:
    # One line: a newline would start another KEY=VALUE assignment.
    return "STATUS=" + " ".join(text.split())


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds, or None when this process has no watchdog."""
    usec = env.get(ENV_WATCHDOG_USEC)
    if not usec:
        return None
    pid = env.get(ENV_WATCHDOG_PID)
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        logger.warning("ignoring $%s=%r: not a number of microseconds", ENV_WATCHDOG_USEC, usec)
        return None
    if value <= 0:
        return None
    if value < 2_000_000 * SHORTEST_PING:
        logger.warning(
            "$%s=%s is shorter than a service can answer: pinging every %gs",
            ENV_WATCHDOG_USEC,
            value,
            SHORTEST_PING,
        )
        return SHORTEST_PING
    return value / 2_000_000
