"""A lean RESP2 connection on asyncio: the hot path of the Redis transport.

redis-py's asyncio client spends most of a pub/sub round trip in its own machinery
(retry and timeout wrappers around every command, a stream reader and a parser call per
message). This connection is an :class:`asyncio.Protocol`: every chunk the socket gives
is fed to a ``hiredis.Reader``, which yields every complete reply in it; replies resolve
futures in the order their commands were sent, and pub/sub messages go straight to a
callback. Writes made during one loop iteration go out in one ``send``.

URLs are parsed by redis-py (``redis.connection.parse_url``), so ``redis://``,
``rediss://`` and ``unix://`` mean exactly what they mean to redis-py. Commands other
than the few the transport needs (and the app's ``cache``) stay on redis-py.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import select
import socket
import ssl
import struct
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import hiredis
from redis.connection import SSLConnection, parse_url

from .._compat import timeout as deadline
from ..exceptions import TransportError

__all__ = [
    "BlockingConnection",
    "BlockingSubscriber",
    "Endpoint",
    "PushHandler",
    "RespConnection",
    "open_connection",
    "pack",
    "pack_publish",
]

logger = logging.getLogger(__name__)

#: Called with each pub/sub message (``[b"message", channel, data]`` or
#: ``[b"pmessage", pattern, channel, data]``). An awaitable result pauses reading
#: until it is done: back-pressure reaches the socket.
PushHandler = Callable[[list[Any]], Awaitable[Any] | None]

#: Called with a command's reply, or with the TransportError it failed with.
ReplyCallback = Callable[[Any], None]

#: How much of a received chunk is fed to the parser at a time. hiredis moves what is
#: left of its buffer each time 1 KiB of it has been parsed, so a 256 KiB chunk of small
#: messages fed whole costs ~32 MB of memmove; fed 4 KiB at a time, ~8 KB.
_FEED_SIZE = 4096

_MESSAGE_KINDS = frozenset({b"message", b"pmessage"})
_CONFIRMATION_KINDS = frozenset({b"subscribe", b"psubscribe", b"unsubscribe", b"punsubscribe"})


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect, parsed once from a URL."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl_context: ssl.SSLContext | None = None

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        """Parse ``redis://``, ``rediss://`` or ``unix://`` the way redis-py does."""
        options = parse_url(url)  # type: ignore[no-untyped-call]
        context = None
        if options.get("connection_class") is SSLConnection:
            context = _ssl_context(options)
        return cls(
            host=str(options.get("host") or "localhost"),
            port=int(options.get("port") or 6379),
            path=options.get("path"),
            db=int(options.get("db") or 0),
            username=options.get("username"),
            password=options.get("password"),
            ssl_context=context,
        )

    def __str__(self) -> str:
        return f"unix://{self.path}" if self.path else f"{self.host}:{self.port}"


def _ssl_context(options: dict[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    requirement = str(options.get("ssl_cert_reqs", "required")).lower()
    if requirement in {"none", "cert_none"}:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif requirement in {"optional", "cert_optional"}:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_OPTIONAL
    if str(options.get("ssl_check_hostname", "")).lower() in {"false", "0", "no"}:
        context.check_hostname = False
    return context


def pack(*args: str | bytes | int) -> bytes:
    """One command in RESP, packed by hiredis."""
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # stub wants a 1-tuple
    return packed


def pack_publish(channel: str, data: bytes | str) -> bytes:
    """``PUBLISH channel data`` in RESP: what ``pack`` makes, in less than half its time.

    A PUBLISH is packed for every message sent, and ``hiredis.pack_command`` takes the
    general path (a list of arguments of any type) for it.
    """
    name = channel.encode()
    if isinstance(data, str):  # as hiredis would take it
        data = data.encode()
    return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        len(name),
        name,
        len(data),
        data,
    )


class RespConnection(asyncio.Protocol):
    """One connection: commands in, replies out in order, pushes to ``on_push``."""

    def __init__(
        self,
        on_push: PushHandler | None = None,
        reply_timeout: float = 10.0,
        on_pushes_end: Callable[[], None] | None = None,
    ) -> None:
        self._on_push = on_push
        self._on_pushes_end = on_pushes_end
        self._reply_timeout = reply_timeout
        self._watchdog: asyncio.TimerHandle | None = None
        self._replies = 0  # replies resolved so far: the watchdog's sign of progress
        self._parser = hiredis.Reader()
        self._unfed: deque[bytes] = deque()  # received, not yet given to the parser
        self._unfed_at = 0  # how much of the first one was given
        self._waiters: deque[asyncio.Future[Any] | ReplyCallback] = deque()
        self._transport: asyncio.Transport | None = None
        self._outgoing: list[bytes] = []
        self._flush_pending = False
        self._paused = False
        self._loop = asyncio.get_running_loop()
        #: Resolved with the error (or None) when the connection is gone.
        self.lost: asyncio.Future[BaseException | None] = self._loop.create_future()

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport; let the kernel notice a peer that vanished silently."""
        # A stream transport (uvloop's do not subclass asyncio.Transport).
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def data_received(self, data: bytes) -> None:
        """Parse every complete reply in the chunk."""
        if len(data) <= _FEED_SIZE and not self._unfed:
            self._parser.feed(data)
        else:
            self._unfed.append(data)
        self._drain()

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail whatever still waits for a reply."""
        self._transport = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        error = TransportError(f"connection lost: {exc}" if exc else "connection closed")
        while self._waiters:
            self._settle(self._waiters.popleft(), error)
        if not self.lost.done():
            self.lost.set_result(exc)

    # -- replies ---------------------------------------------------------------------
    def _drain(self) -> None:
        parser = self._parser
        pushed = False
        try:
            while not self._paused:
                try:
                    reply = parser.gets()
                except hiredis.ProtocolError as exc:
                    logger.error("protocol error from the server: %s", exc)
                    self.close()
                    return
                if reply is False:
                    if not self._unfed:
                        return
                    self._feed_some()
                    continue
                if self._on_push is not None and type(reply) is list and reply:
                    kind = reply[0]
                    if kind in _MESSAGE_KINDS:
                        pushed = True
                        waiter = self._on_push(reply)
                        if waiter is not None:
                            self._pause_until(waiter)
                        continue
                    if kind in _CONFIRMATION_KINDS:
                        continue
                self._resolve(reply)
        finally:
            if pushed and self._on_pushes_end is not None:
                self._on_pushes_end()  # like on_push, it must not raise

    def _feed_some(self) -> None:
        data = self._unfed[0]
        start = self._unfed_at
        end = start + _FEED_SIZE
        if end < len(data):
            self._parser.feed(data, start, _FEED_SIZE)
            self._unfed_at = end
        else:
            self._parser.feed(data, start, len(data) - start)
            self._unfed.popleft()
            self._unfed_at = 0

    def _resolve(self, reply: Any) -> None:
        if not self._waiters:
            logger.warning("reply with no command waiting for it: %r", reply)
            return
        self._replies += 1
        if isinstance(reply, hiredis.ReplyError):
            reply = TransportError(str(reply))
        self._settle(self._waiters.popleft(), reply)

    @staticmethod
    def _settle(waiter: asyncio.Future[Any] | ReplyCallback, outcome: Any) -> None:
        if not isinstance(waiter, asyncio.Future):
            try:
                waiter(outcome)
            except Exception:
                logger.exception("a reply callback failed")
        elif waiter.done():
            pass
        elif isinstance(outcome, TransportError):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)

    def _pause_until(self, waiter: Awaitable[Any]) -> None:
        self._paused = True
        if self._transport is not None:
            self._transport.pause_reading()
        asyncio.ensure_future(waiter).add_done_callback(self._resume)

    def _resume(self, done: asyncio.Future[Any]) -> None:
        if not done.cancelled() and done.exception() is not None:
            logger.error("message handler failed", exc_info=done.exception())
        self._paused = False
        if self._transport is not None:
            self._transport.resume_reading()
        self._drain()

    # -- commands --------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        """True until the connection is lost or closed."""
        return self._transport is not None and not self._transport.is_closing()

    def send(self, *args: str | bytes | int) -> asyncio.Future[Any]:
        """Send one command; the future gets its reply (or a TransportError)."""
        return self.send_packed(pack(*args))

    def send_packed(self, packed: bytes) -> asyncio.Future[Any]:
        """Send one packed command; the future gets its reply (or a TransportError)."""
        waiter: asyncio.Future[Any] = self._loop.create_future()
        self._expect(packed, waiter)
        return waiter

    def send_packed_then(self, packed: bytes, callback: ReplyCallback) -> None:
        """Send one packed command; ``callback`` gets its reply or a TransportError.

        No future: the callback runs as soon as the reply is parsed.
        """
        self._expect(packed, callback)

    def _expect(self, packed: bytes, waiter: asyncio.Future[Any] | ReplyCallback) -> None:
        self.send_unanswered(packed)
        self._waiters.append(waiter)
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(
                self._reply_timeout, self._check_progress, self._replies
            )

    def _check_progress(self, replies_before: int) -> None:
        # Armed while commands wait: a server that answers nothing for a whole period
        # is stalled (stopped, or its host gone): drop the connection, fail the waiters.
        self._watchdog = None
        if not self._waiters:
            return
        if self._replies == replies_before:
            logger.warning("no reply for %.0f s: dropping the connection", self._reply_timeout)
            if self._transport is not None:
                self._transport.abort()
            return
        self._watchdog = self._loop.call_later(
            self._reply_timeout, self._check_progress, self._replies
        )

    def send_unanswered(self, packed: bytes) -> None:
        """Send command(s) whose replies never come as replies (SUBSCRIBE and the like)."""
        if not self.is_open:
            raise TransportError("not connected")
        self._outgoing.append(packed)
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        outgoing, self._outgoing = self._outgoing, []
        if self._transport is not None and outgoing:
            self._transport.write(b"".join(outgoing))

    def close(self) -> None:
        """Close the connection (idempotent); waiters fail."""
        if self._transport is not None:
            self._transport.close()


async def open_connection(
    endpoint: Endpoint,
    *,
    on_push: PushHandler | None = None,
    on_pushes_end: Callable[[], None] | None = None,
    timeout: float = 2.0,
) -> RespConnection:
    """Connect, authenticate and select the database; raise TransportError on failure.

    ``on_push`` gets each pub/sub message; ``on_pushes_end`` is called after each run of
    them that one read brought, before the connection waits for anything. Neither may
    raise.
    """
    loop = asyncio.get_running_loop()

    def factory() -> RespConnection:
        return RespConnection(on_push, on_pushes_end=on_pushes_end)

    try:
        if endpoint.path:
            opening = loop.create_unix_connection(factory, endpoint.path, ssl=endpoint.ssl_context)
        else:
            opening = loop.create_connection(
                factory,
                endpoint.host,
                endpoint.port,
                ssl=endpoint.ssl_context,
                server_hostname=endpoint.host if endpoint.ssl_context else None,
            )
        async with deadline(timeout):
            _, connection = await opening
    except asyncio.TimeoutError:
        raise TransportError(f"no answer from {endpoint} within {timeout}s") from None
    except (OSError, ssl.SSLError) as exc:
        raise TransportError(f"cannot connect to {endpoint}: {exc}") from exc
    try:
        handshake: list[asyncio.Future[Any]] = []
        if endpoint.password is not None:
            credentials = (
                (endpoint.username, endpoint.password)
                if endpoint.username
                else (endpoint.password,)
            )
            handshake.append(connection.send("AUTH", *credentials))
        if endpoint.db:
            handshake.append(connection.send("SELECT", endpoint.db))
        handshake.append(connection.send("PING"))
        async with deadline(timeout):
            await asyncio.gather(*handshake)
    except asyncio.TimeoutError:
        connection.close()
        raise TransportError(f"{endpoint} accepted the connection but did not answer") from None
    except BaseException:
        connection.close()
        raise
    return connection


# Commands sent without waiting before their replies are read anyway.
_MAX_UNREAD = 256
# A connection idle this long is checked for a server that closed it (a restart) before
# it is used again. A busy one is not: the check is a system call per message.
_CHECK_AFTER_IDLE = 1.0


class BlockingConnection:
    """A blocking connection for one thread: send a command, read its reply.

    What :meth:`RedisTransport.publish_blocking` uses from handler threads: a PUBLISH
    costs a ``sendall`` and a ``recv``, without redis-py's per-command machinery.
    """

    def __init__(self, endpoint: Endpoint, timeout: float) -> None:
        self._endpoint = endpoint
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._parser = hiredis.Reader()
        self._unread = 0  # replies owed to commands sent without waiting
        self._last_used = 0.0

    def _connect(self) -> socket.socket:
        endpoint = self._endpoint
        try:
            if endpoint.path:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self._timeout)
                sock.connect(endpoint.path)
            else:
                sock = socket.create_connection((endpoint.host, endpoint.port), self._timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if endpoint.ssl_context is not None:
                sock = endpoint.ssl_context.wrap_socket(sock, server_hostname=endpoint.host)
            else:
                _use_kernel_timeouts(sock, self._timeout)
        except OSError as exc:
            raise TransportError(f"cannot connect to {endpoint}: {exc}") from exc
        self._sock = sock
        self._parser = hiredis.Reader()
        self._unread = 0
        try:
            if endpoint.password is not None:
                user = (endpoint.username,) if endpoint.username else ()
                self._send(pack("AUTH", *user, endpoint.password))
                self._read()
            if endpoint.db:
                self._send(pack("SELECT", endpoint.db))
                self._read()
        except BaseException:
            self.close()
            raise
        return sock

    def command(self, packed: bytes) -> Any:
        """Send one packed command and return its reply.

        A connection the server closed while it sat idle (a restart) is replaced before
        sending; one lost while a command is in flight fails it: it may have run.
        """
        self._ready()
        self._send(packed)
        return self._read()

    def pipeline(self, commands: list[bytes]) -> list[Any]:
        """Send packed commands in one write; return their replies (errors as exceptions)."""
        self._ready()
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
        command's: a run of these costs one system call each.
        """
        if self._unread >= _MAX_UNREAD:
            self._read_unread()
        self._ready(read_unread=False)
        self._send(packed)
        self._unread += 1

    def _ready(self, *, read_unread: bool = True) -> None:
        idle = time.monotonic() - self._last_used >= _CHECK_AFTER_IDLE
        if self._unread and (read_unread or idle):
            with contextlib.suppress(TransportError):  # closed: reconnect below
                self._read_unread()
        if self._sock is None or (idle and _closed_by_peer(self._sock)):
            self.close()
            self._connect()

    def _read_unread(self) -> None:
        while self._unread:
            self._unread -= 1
            try:
                self._read()
            except TransportError as exc:
                if self._sock is None:
                    self._unread = 0
                    raise
                logger.warning("a command sent without waiting failed: %s", exc)

    def _send(self, packed: bytes) -> None:
        assert self._sock is not None
        self._last_used = time.monotonic()
        try:
            self._sock.sendall(packed)
        except OSError as exc:
            self.close()
            raise TransportError(f"{self._endpoint}: {exc}") from exc

    def _read(self) -> Any:
        sock = self._sock
        assert sock is not None
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
            raise TransportError(f"{self._endpoint}: {exc}") from exc
        if isinstance(reply, hiredis.ReplyError):
            raise TransportError(str(reply))
        return reply

    def close(self) -> None:
        """Close the socket (idempotent); the next command reconnects."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


class BlockingSubscriber(BlockingConnection):
    """A blocking connection subscribed to one channel, read by one thread at a time.

    A ``DaebusCaller`` called from one thread at a time reads its replies here, in the
    calling thread, as a hand-written loop would: no hand-over from another thread.
    """

    def __init__(self, endpoint: Endpoint, channel: str, timeout: float) -> None:
        super().__init__(endpoint, timeout)
        self.channel = channel
        self._wait = timeout  # the receive timeout the socket has now

    def open(self) -> None:
        """Be connected and subscribed, reconnecting if the server closed the connection.

        Messages that came while nobody read stay to be read. Raises ``TransportError``.
        """
        sock = self._sock
        if sock is not None and not _closed_by_peer(sock):
            return
        self.close()
        self._connect()
        self._wait = self._timeout
        self._send(pack("SUBSCRIBE", self.channel))
        self._read()  # the confirmation

    def next_message(self, timeout: float) -> bytes | None:
        """The data of the next message, or None if none comes within ``timeout`` seconds.

        Raises ``TransportError`` if the connection is lost (it is closed then).
        """
        sock = self._sock
        if sock is None:
            raise TransportError(f"{self._endpoint}: not connected")
        timeout = max(timeout, 0.000_001)  # a zero timeout would mean none at all
        if timeout != self._wait:
            if isinstance(sock, ssl.SSLSocket):
                sock.settimeout(timeout)  # TLS reads its records through Python
            else:
                _use_kernel_timeouts(sock, timeout)
            self._wait = timeout
        parser = self._parser
        while True:
            try:
                reply = parser.gets()
                while reply is False:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise OSError("connection closed by the server")
                    parser.feed(chunk)
                    reply = parser.gets()
            except OSError as exc:
                if _timed_out(exc):
                    return None
                self.close()
                raise TransportError(f"{self._endpoint}: {exc}") from exc
            except hiredis.ProtocolError as exc:
                self.close()
                raise TransportError(f"{self._endpoint}: {exc}") from exc
            if type(reply) is list and len(reply) == 3 and reply[0] == b"message":
                data: bytes = reply[2]
                return data
            # Anything else (a confirmation) is not a message: read on.


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
