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
_PING = b"*1\r\n$4\r\nPING\r\n"
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


#: A server that sends nothing for this long while it owes an answer (to a command, or
#: to the PING of a health check) is taken as gone: stopped, hung, or its host lost.
#: Long enough for a Redis busy with a slow script (``lua-time-limit`` is 5 s).
SILENCE_TIMEOUT = 5.0
#: How often a connection that pings when idle (a subscriber) asks its server whether it
#: is still there. Each ask wakes the process twice (the timer, the answer): an idle
#: service must stay cheap to keep on a small device.
HEALTH_CHECK_INTERVAL = 2.5


class RespConnection(asyncio.Protocol):
    """One connection: commands in, replies out in order, pushes to ``on_push``.

    A server that stays silent for :data:`SILENCE_TIMEOUT` while it owes an answer is
    taken as gone and the connection aborted, so that a hung server is noticed like a
    closed connection is. A connection made with ``ping_when_idle`` (a subscriber, which
    sends no commands of its own) also sends a PING every :data:`HEALTH_CHECK_INTERVAL`
    while it waits for nothing, so that it notices too.
    """

    def __init__(
        self,
        on_push: PushHandler | None = None,
        on_pushes_end: Callable[[], None] | None = None,
        *,
        ping_when_idle: bool = False,
    ) -> None:
        self._on_push = on_push
        self._on_pushes_end = on_pushes_end
        self._ping_when_idle = ping_when_idle
        self._silence_timeout = SILENCE_TIMEOUT
        self._health_check_interval = HEALTH_CHECK_INTERVAL
        self._health_check: asyncio.TimerHandle | None = None
        self._last_received = 0.0  # loop time of the last data from the server
        self._waiting_since = 0.0  # loop time the oldest command still waiting was sent
        self._dropped_because: str | None = None  # why the health check aborted it
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
        self._last_received = self._loop.time()
        if self._ping_when_idle:
            self._check_health_in(self._health_check_interval)

    def data_received(self, data: bytes) -> None:
        """Parse every complete reply in the chunk."""
        self._last_received = self._loop.time()
        if len(data) <= _FEED_SIZE and not self._unfed:
            self._parser.feed(data)
        else:
            self._unfed.append(data)
        self._drain()

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail whatever still waits for a reply."""
        self._transport = None
        if self._health_check is not None:
            self._health_check.cancel()
            self._health_check = None
        if self._dropped_because is not None:
            exc = TransportError(self._dropped_because)
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
        if not self._waiters:
            self._waiting_since = self._loop.time()
        self._waiters.append(waiter)
        if self._health_check is None:
            self._check_health_in(self._silence_timeout)

    def _check_health_in(self, delay: float) -> None:
        self._health_check = self._loop.call_later(delay, self._check_health)

    def _check_health(self) -> None:
        self._health_check = None
        if not self.is_open:
            return
        if not self._waiters:
            if self._ping_when_idle:
                # Idle: ask, so that a server that hung or went away is noticed before
                # the next command needs it.
                self._check_health_in(self._health_check_interval)
                self._expect(_PING, _ignore_reply)
            return  # else armed again by the next command
        now = self._loop.time()
        if self._paused:  # not reading: nothing can be seen to come
            self._last_received = now
        silent_for = now - max(self._last_received, self._waiting_since)
        if silent_for >= self._silence_timeout:
            # Owed an answer: a server silent for this long is stopped or gone.
            self._dropped_because = f"no answer for {silent_for:.0f} s"
            if self._transport is not None:
                self._transport.abort()
            return
        delay = self._silence_timeout - silent_for
        if self._ping_when_idle:
            delay = min(delay, self._health_check_interval)
        self._check_health_in(delay)

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
    ping_when_idle: bool = False,
    timeout: float = 2.0,
) -> RespConnection:
    """Connect, authenticate and select the database; raise TransportError on failure.

    ``on_push`` gets each pub/sub message; ``on_pushes_end`` is called after each run of
    them that one read brought, before the connection waits for anything. Neither may
    raise. ``ping_when_idle``: see :class:`RespConnection`.
    """
    loop = asyncio.get_running_loop()

    def factory() -> RespConnection:
        return RespConnection(on_push, on_pushes_end, ping_when_idle=ping_when_idle)

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

    Commands sent without waiting (:meth:`send_only`) are kept until their replies are
    read: if the connection turns out to be lost before, they are sent again on a new
    one, so that a server restart loses none of them.
    """

    def __init__(self, endpoint: Endpoint, timeout: float) -> None:
        self._endpoint = endpoint
        self._timeout = timeout  # for commands given no timeout of their own
        self._sock: socket.socket | None = None
        self._sock_timeout = timeout  # the receive and send timeout the socket has
        self._parser = hiredis.Reader()
        # Sent by send_only, replies not read yet: sent again if the connection is lost.
        self._unconfirmed: deque[bytes] = deque()
        self._last_used = 0.0

    def _connect(self, timeout: float) -> socket.socket:
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
        self._ready(self._timeout if timeout is None else timeout)
        self._send(packed)
        return self._read()

    def pipeline(self, commands: list[bytes], timeout: float | None = None) -> list[Any]:
        """Send packed commands in one write; return their replies (errors as exceptions)."""
        self._ready(self._timeout if timeout is None else timeout)
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
        self._ready(self._timeout, read_unconfirmed=False)
        self._unconfirmed.append(packed)
        try:
            self._send(packed)
        except TransportError as exc:
            self._send_again(exc)

    def _ready(self, timeout: float, *, read_unconfirmed: bool = True) -> None:
        idle = time.monotonic() - self._last_used >= _CHECK_AFTER_IDLE
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
        self._last_used = time.monotonic()
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
    While it waits, it checks its server as :class:`RespConnection` does: a PING after
    each :data:`HEALTH_CHECK_INTERVAL` of silence, and the connection is taken as lost
    when the server stays silent for :data:`SILENCE_TIMEOUT`.
    """

    def __init__(self, endpoint: Endpoint, channel: str, timeout: float) -> None:
        super().__init__(endpoint, timeout)
        self.channel = channel
        self._silence_timeout = SILENCE_TIMEOUT
        self._health_check_interval = HEALTH_CHECK_INTERVAL
        self._probed_at: float | None = None  # when an unanswered health-check PING went

    def open(self, timeout: float | None = None) -> None:
        """Be connected and subscribed, reconnecting if the server closed the connection.

        Messages that came while nobody read stay to be read. ``timeout`` bounds each
        wait for the server. Raises ``TransportError``.
        """
        sock = self._sock
        if sock is not None and not _closed_by_peer(sock):
            return
        self.close()
        self._connect(self._timeout if timeout is None else timeout)
        self._probed_at = None
        self._send(pack("SUBSCRIBE", self.channel))
        self._read()  # the confirmation

    def next_message(self, timeout: float) -> bytes | None:
        """The data of the next message, or None if none comes within ``timeout`` seconds.

        Raises ``TransportError`` if the connection is lost, or its server stays silent
        for :data:`SILENCE_TIMEOUT` (it is closed then).
        """
        sock = self._sock
        if sock is None:
            raise TransportError(f"{self._endpoint}: not connected")
        deadline = time.monotonic() + timeout
        parser = self._parser
        while True:
            try:
                reply = parser.gets()
                while reply is False:
                    chunk = self._receive(sock, deadline)
                    if chunk is None:
                        return None
                    parser.feed(chunk)
                    reply = parser.gets()
            except OSError as exc:
                self.close()
                raise TransportError(f"{self._endpoint}: {exc}") from exc
            except hiredis.ProtocolError as exc:
                self.close()
                raise TransportError(f"{self._endpoint}: {exc}") from exc
            if type(reply) is list and len(reply) == 3 and reply[0] == b"message":
                data: bytes = reply[2]
                return data
            # Anything else (a confirmation, a health check's pong) is not a message.

    def _receive(self, sock: socket.socket, deadline: float) -> bytes | None:
        """The next chunk from the server, or None at ``deadline``.

        Waits in slices of at most :data:`HEALTH_CHECK_INTERVAL`, checking the server
        between them. Raises OSError if the connection is lost or the server silent.
        """
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            interval = self._health_check_interval
            wait = interval if remaining > interval else remaining
            if wait != self._sock_timeout:
                self._set_timeout(sock, wait)
            try:
                chunk = sock.recv(65536)
            except OSError as exc:
                if not _timed_out(exc):
                    raise
                self._check_silence(sock)
                continue
            if not chunk:
                raise OSError("connection closed by the server")
            self._probed_at = None
            return chunk

    def _check_silence(self, sock: socket.socket) -> None:
        now = time.monotonic()
        if self._probed_at is None:
            self._probed_at = now
            sock.sendall(_PING)
        elif now - self._probed_at >= self._silence_timeout:
            raise OSError(f"no answer for {now - self._probed_at:.0f} s")


def _ignore_reply(reply: Any) -> None:
    """The reply callback of a health check's PING: that an answer came is what counts."""


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
