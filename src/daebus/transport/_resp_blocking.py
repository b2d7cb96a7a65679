"""Blocking RESP connections, for threads that are not the event loop's.

:class:`BlockingConnection` is what a worker thread publishes on (a ``def`` handler's
reply, ``broadcast.send()`` outside a handler): a PUBLISH costs a ``sendall`` and a
``recv``, without redis-py's per-command machinery. :class:`BlockingSubscriber` is the
connection a blocking caller reads its replies from, in the calling thread. Both check
their server as :class:`~daebus.transport._resp.RespConnection` does.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import ssl
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis

from ..exceptions import TransportError
from . import _resp
from ._endpoint import Endpoint, check_role
from ._resp import PING, pack

__all__ = ["BlockingConnection", "BlockingSubscriber"]

logger = logging.getLogger(__name__)


# Commands sent without waiting before their replies are read anyway.
_MAX_UNREAD = 256
# A connection idle this long is checked for a server that closed it (a restart) before
# it is used again. A busy one is not: the check is a system call per message.
_CHECK_AFTER_IDLE = 1.0


class BlockingConnection:
    """A blocking connection for one thread: send a command, read its reply.

    What :meth:`RedisTransport.publish_blocking` uses from handler threads: a PUBLISH
    costs a ``sendall`` and a ``recv``, without redis-py's per-command machinery.

    Commands sent without waiting (:meth:`send_only`) are kept until their replies are
    read: if the connection turns out to be lost before, they are sent again on a new
    one, so that a server restart loses none of them.
    """

    def __init__(
        self, endpoint: Endpoint, timeout: float, resolve: Callable[[], Endpoint] | None = None
    ) -> None:
        self._endpoint = endpoint
        # Where to connect, asked again at each connect (sentinels name the master).
        self._resolve = resolve
        self._timeout = timeout  # for commands given no timeout of their own
        self._sock: socket.socket | None = None
        self._sock_timeout = timeout  # the receive and send timeout the socket has
        self._parser = hiredis.Reader()
        # Sent by send_only, replies not read yet: sent again if the connection is lost.
        self._unconfirmed: deque[bytes] = deque()
        self._last_used = 0.0  # monotonic time the connection was last made ready for use

    def _connect(self, timeout: float) -> socket.socket:
        if self._resolve is not None:
            self._endpoint = self._resolve()
        endpoint = self._endpoint
        try:
            if endpoint.path:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                sock.connect(endpoint.path)
            else:
                sock = socket.create_connection((endpoint.host, endpoint.port), timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if endpoint.ssl_context is not None:
                sock = endpoint.ssl_context.wrap_socket(sock, server_hostname=endpoint.host)
            else:
                _use_kernel_timeouts(sock, timeout)
        except OSError as exc:
            raise TransportError(f"cannot connect to {endpoint}: {exc}") from exc
        self._sock = sock
        self._sock_timeout = timeout
        self._parser = hiredis.Reader()
        try:
            if endpoint.password is not None:
                user = (endpoint.username,) if endpoint.username else ()
                self._send(pack("AUTH", *user, endpoint.password))
                self._read()
            if endpoint.db:
                self._send(pack("SELECT", endpoint.db))
                self._read()
            if endpoint.must_be_master:
                self._send(pack("ROLE"))
                check_role(endpoint, self._read())
        except BaseException:
            self.close()
            raise
        return sock

    def command(self, packed: bytes, timeout: float | None = None) -> Any:
        """Send one packed command and return its reply.

        ``timeout`` bounds each wait for the server (the connection's default if None).
        A connection the server closed while it sat idle (a restart) is replaced before
        sending; one lost while a command is in flight fails it: it may have run.
        """
        self._make_ready(self._timeout if timeout is None else timeout)
        self._send(packed)
        return self._read()

    def pipeline(self, commands: list[bytes], timeout: float | None = None) -> list[Any]:
        """Send packed commands in one write; return their replies (errors as exceptions)."""
        self._make_ready(self._timeout if timeout is None else timeout)
        self._send(b"".join(commands))
        replies: list[Any] = []
        append, gets = replies.append, self._parser.gets
        while len(replies) < len(commands):
            reply = gets()  # most replies are parsed already: _read() only when more must come
            if reply is False:
                try:
                    reply = self._read()
                except TransportError as exc:
                    if self._sock is None:
                        raise
                    reply = exc
            elif isinstance(reply, hiredis.ReplyError):
                reply = TransportError(str(reply))
            append(reply)
        return replies

    def send_only(self, packed: bytes) -> None:
        """Send one packed command without waiting for its reply.

        Replies are read (and error replies logged) in batches, or before the next
        command's: a run of these costs one system call each. Until its reply is read,
        the command is sent again if the connection turns out to be lost.
        """
        if len(self._unconfirmed) >= _MAX_UNREAD:
            self._read_unconfirmed()
        self._make_ready(self._timeout, read_unconfirmed=False)
        self._unconfirmed.append(packed)
        try:
            self._send(packed)
        except TransportError as exc:
            self._send_again(exc)

    def _make_ready(self, timeout: float, *, read_unconfirmed: bool = True) -> None:
        now = time.monotonic()
        idle = now - self._last_used >= _CHECK_AFTER_IDLE
        self._last_used = now
        if self._sock is not None and timeout != self._sock_timeout:
            self._set_timeout(self._sock, timeout)
        if self._unconfirmed and (read_unconfirmed or idle):
            self._read_unconfirmed()
        if self._sock is None or (idle and _closed_by_peer(self._sock)):
            self.close()
            self._connect(timeout)

    def _set_timeout(self, sock: socket.socket, timeout: float) -> None:
        if isinstance(sock, ssl.SSLSocket):
            sock.settimeout(timeout)  # TLS reads its records through Python
        else:
            _use_kernel_timeouts(sock, timeout)
        self._sock_timeout = timeout

    def _read_unconfirmed(self) -> None:
        sent_again = False
        while self._unconfirmed:
            try:
                self._read()
            except TransportError as exc:
                if self._sock is None:  # lost: what is unconfirmed may not have arrived
                    if sent_again:
                        self._unconfirmed.clear()
                        raise
                    self._send_again(exc)
                    sent_again = True
                    continue
                logger.warning("a command sent without waiting failed: %s", exc)
            self._unconfirmed.popleft()

    def _send_again(self, cause: TransportError) -> None:
        """Send the unconfirmed commands again, on a new connection.

        They are replies: a duplicate is ignored by its caller, while a loss would make
        it wait its whole timeout.
        """
        unconfirmed = list(self._unconfirmed)
        self.close()
        try:
            self._connect(self._sock_timeout)
            self._send(b"".join(unconfirmed))
        except TransportError as exc:
            self.close()
            self._unconfirmed.clear()
            raise TransportError(
                f"lost {len(unconfirmed)} message(s) sent without waiting ({cause}); "
                f"sending them again failed: {exc}"
            ) from exc
        # Debug: the outage itself is logged once, by the transport's subscriber.
        logger.debug(
            "%s: connection lost (%s); sent %d message(s) again",
            self._endpoint,
            cause,
            len(unconfirmed),
        )

    def _send(self, packed: bytes) -> None:
        sock = self._sock
        if sock is None:
            raise TransportError(f"{self._endpoint}: not connected")
        try:
            sock.sendall(packed)
        except OSError as exc:
            self.close()
            raise TransportError(f"{self._endpoint}: {_describe(exc)}") from exc

    def _read(self) -> Any:
        sock = self._sock
        if sock is None:
            raise TransportError(f"{self._endpoint}: not connected")
        try:
            reply = self._parser.gets()
            while reply is False:
                chunk = sock.recv(65536)
                if not chunk:
                    raise OSError("connection closed by the server")
                self._parser.feed(chunk)
                reply = self._parser.gets()
        except (OSError, hiredis.ProtocolError) as exc:
            self.close()
            raise TransportError(f"{self._endpoint}: {_describe(exc)}") from exc
        if isinstance(reply, hiredis.ReplyError):
            raise TransportError(str(reply))
        return reply

    def close(self) -> None:
        """Close the socket (idempotent); the next command reconnects.

        What was sent without waiting stays, to be sent again by the next command.
        """
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


class BlockingSubscriber(BlockingConnection):
    """A blocking connection subscribed to one channel, read by one thread at a time.

    A ``DaebusCaller`` called from one thread at a time reads its replies here, in the
    calling thread, as a hand-written loop would: no hand-over from another thread.
    While it waits, it checks its server as ``RespConnection`` does: a PING after each
    ``HEALTH_CHECK_INTERVAL`` of silence, and the connection is taken as lost when the
    server stays silent for ``SILENCE_TIMEOUT`` (both in :mod:`._resp`).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        channel: str,
        timeout: float,
        resolve: Callable[[], Endpoint] | None = None,
    ) -> None:
        super().__init__(endpoint, timeout, resolve)
        self.channel = channel
        self._silence_timeout = _resp.SILENCE_TIMEOUT
        # A caller waiting for its reply wants to know soon that the server is gone:
        # it asks after a second of silence, whatever the idle connections do.
        self._health_check_interval = min(_resp.HEALTH_CHECK_INTERVAL, 1.0)
        # While a health-check PING is unanswered: since when the server has been silent
        # (the start of the wait in which it sent nothing). None once anything comes.
        self._silent_since: float | None = None
        # Tells without an exception that the idle socket has nothing to read (open()
        # asks before every call); None where poll() is missing.
        self._poller: select.poll | None = None

    def open(self, timeout: float | None = None) -> None:
        """Be connected and subscribed, reconnecting if the server closed the connection.

        Messages that came while nobody read stay to be read. ``timeout`` bounds each
        wait for the server. Raises ``TransportError``.
        """
        sock = self._sock
        if sock is not None:
            poller = self._poller
            # Nothing to read means no end of file either: the connection is still up.
            if (poller is not None and not poller.poll(0)) or not _closed_by_peer(sock):
                return
        self.close()
        sock = self._connect(self._timeout if timeout is None else timeout)
        self._silent_since = None
        if _poll is not None:
            self._poller = _poll()
            self._poller.register(sock, select.POLLIN)
        self._send(pack("SUBSCRIBE", self.channel))
        self._read()  # the confirmation

    def next_message(self, timeout: float) -> bytes | None:
        """The data of the next message, or None if none comes within ``timeout`` seconds.

        Waits in slices of at most the health check's interval, checking the server
        between them. Raises ``TransportError`` if the connection is lost, or its server
        stays silent for :data:`~daebus.transport._resp.SILENCE_TIMEOUT` (it is closed
        then).
        """
        sock = self._sock
        if sock is None:
            raise TransportError(f"{self._endpoint}: not connected")
        deadline = time.monotonic() + timeout
        remaining = timeout
        interval = self._health_check_interval
        parser = self._parser
        try:
            while True:
                reply = parser.gets()
                while reply is False:
                    if remaining <= 0:
                        return None
                    wait = interval if remaining > interval else remaining
                    if wait != self._sock_timeout:
                        self._set_timeout(sock, wait)
                    try:
                        chunk = sock.recv(65536)
                    except OSError as exc:
                        if not _timed_out(exc):
                            raise
                        # A whole slice without a byte from the server.
                        now = time.monotonic()
                        self._check_silence(sock, now - wait, now)
                        remaining = deadline - now
                        continue
                    if not chunk:
                        raise OSError("connection closed by the server")
                    self._silent_since = None
                    parser.feed(chunk)
                    reply = parser.gets()
                if type(reply) is list and len(reply) == 3 and reply[0] == b"message":
                    data: bytes = reply[2]
                    return data
                # Anything else (a confirmation, a health check's pong) is not a message.
                remaining = deadline - time.monotonic()
        except OSError as exc:
            self.close()
            raise TransportError(f"{self._endpoint}: {exc}") from exc
        except hiredis.ProtocolError as exc:
            self.close()
            raise TransportError(f"{self._endpoint}: {exc}") from exc

    def _check_silence(self, sock: socket.socket, silent_since: float, now: float) -> None:
        """The server sent nothing since ``silent_since``: ask it, or give up on it."""
        if self._silent_since is None:
            self._silent_since = silent_since
            sock.sendall(PING)
        elif now - self._silent_since >= self._silence_timeout:
            raise OSError(f"no answer for {now - self._silent_since:.0f} s")

    def close(self) -> None:
        """Close the socket (idempotent); :meth:`open` opens it again."""
        self._poller = None
        super().close()


def _describe(exc: BaseException) -> str:
    """An OSError as a reader wants it: a timeout says so, not "Resource temporarily..."."""
    if isinstance(exc, OSError) and _timed_out(exc):
        return "no answer from the server in time"
    return str(exc)


def _timed_out(exc: OSError) -> bool:
    """True if a receive failed only because its timeout passed."""
    if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):  # the kernel's timeout
        return True
    return isinstance(exc, TimeoutError) and exc.errno is None  # socket.settimeout's


def _use_kernel_timeouts(sock: socket.socket, timeout: float) -> None:
    """Make ``sock`` blocking with the timeout enforced by the kernel, where possible.

    A Python socket with a timeout polls before every send and receive: two system
    calls, each giving up the GIL, where one does.
    """
    if not sys.platform.startswith("linux"):
        sock.settimeout(timeout)
        return
    seconds = int(timeout)
    timeval = struct.pack("ll", seconds, int((timeout - seconds) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    sock.settimeout(None)


def _closed_by_peer(sock: socket.socket) -> bool:
    """True if the idle socket has hit end of file (or an error) already."""
    try:
        if _PEEK_NOW is not None and sock.gettimeout() is None:  # kernel timeouts, no TLS
            try:  # one system call, and no select(), which fails past fd 1023
                return not sock.recv(1, _PEEK_NOW)
            except BlockingIOError:
                return False  # nothing to read, and no end of file
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and not sock.recv(1, socket.MSG_PEEK)
    except (OSError, ValueError):
        return True


_PEEK_NOW = socket.MSG_PEEK | socket.MSG_DONTWAIT if hasattr(socket, "MSG_DONTWAIT") else None
_poll = getattr(select, "poll", None)  # not on Windows
