"""A lean RESP2 connection on asyncio: the hot path of the Redis transport.

redis-py's asyncio client spends most of a pub/sub round trip in its own machinery
(retry and timeout wrappers around every command, a stream reader and a parser call per
message). This connection is an :class:`asyncio.Protocol`: every chunk the socket gives
is fed to a ``hiredis.Reader``, which yields every complete reply in it; replies resolve
futures in the order their commands were sent, and pub/sub messages go straight to a
callback. Writes made during one loop iteration go out in one ``send``.

Commands other than the few the transport needs (and the app's ``cache``) stay on
redis-py. The blocking connections of other threads are in :mod:`._resp_blocking`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

import hiredis

from .._compat import timeout as deadline
from ..exceptions import TransportError
from ._endpoint import Endpoint, check_role

__all__ = [
    "HEALTH_CHECK_INTERVAL",
    "PING",
    "SILENCE_TIMEOUT",
    "PushHandler",
    "RespConnection",
    "open_connection",
    "pack",
    "pack_publish",
]

logger = logging.getLogger(__name__)

#: Called with each pub/sub message (``[b"message", channel, data]``,
#: ``[b"pmessage", pattern, channel, data]`` or, sharded, ``[b"smessage", channel, data]``)
#: and each ``[b"sunsubscribe", channel, count]``.
#: An awaitable result pauses reading until it is done: back-pressure reaches the socket.
PushHandler = Callable[[list[Any]], Awaitable[Any] | None]

#: Called with a command's reply, or with the TransportError it failed with.
ReplyCallback = Callable[[Any], None]

#: How much of a received chunk is fed to the parser at a time. hiredis moves what is
#: left of its buffer each time 1 KiB of it has been parsed, so a 256 KiB chunk of small
#: messages fed whole costs ~32 MB of memmove; fed 4 KiB at a time, ~8 KB.
_FEED_SIZE = 4096

# A node that loses a channel's slot tells its sharded subscribers with a
# ``sunsubscribe`` nobody asked for: it goes to ``on_push`` with the messages, never
# taken for the reply to a command (a cluster's subscriber sends SUNSUBSCRIBE unanswered).
_MESSAGE_KINDS = frozenset({b"message", b"pmessage", b"smessage", b"sunsubscribe"})
PING = b"*1\r\n$4\r\nPING\r\n"
_CONFIRMATION_KINDS = frozenset({b"subscribe", b"psubscribe", b"unsubscribe", b"punsubscribe"})


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
HEALTH_CHECK_INTERVAL = 4.0


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
        silence_timeout: float | None = None,
    ) -> None:
        self._on_push = on_push
        self._on_pushes_end = on_pushes_end
        self._ping_when_idle = ping_when_idle
        # Read when made, not when defined: tests shorten the module's value.
        self._silence_timeout = SILENCE_TIMEOUT if silence_timeout is None else silence_timeout
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
                self._expect(PING, _ignore_reply)
            return  # else armed again by the next command
        now = self._loop.time()
        if self._paused:  # not reading: nothing can be seen to come
            self._last_received = now
        owed_since = self._waiting_since
        if self._ping_when_idle:
            # Alive, it sends something at least every interval (a pong, if nothing
            # else): silence counts from its last data, not from the PING just sent.
            owed_since -= self._health_check_interval
        silent_for = now - max(self._last_received, owed_since)
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
    silence_timeout: float | None = None,
    timeout: float = 2.0,
) -> RespConnection:
    """Connect, authenticate and select the database; raise TransportError on failure.

    ``on_push`` gets each pub/sub message; ``on_pushes_end`` is called after each run of
    them that one read brought, before the connection waits for anything. Neither may
    raise. ``ping_when_idle``: see :class:`RespConnection`. ``silence_timeout``: how long
    the server may keep silent while it owes an answer (by default
    :data:`SILENCE_TIMEOUT`; a connection whose commands block on the server waits
    longer).
    """
    loop = asyncio.get_running_loop()

    def factory() -> RespConnection:
        return RespConnection(
            on_push, on_pushes_end, ping_when_idle=ping_when_idle, silence_timeout=silence_timeout
        )

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
        if endpoint.must_be_master:
            handshake.append(connection.send("ROLE"))
        async with deadline(timeout):
            replies = await asyncio.gather(*handshake)
        if endpoint.must_be_master:
            check_role(endpoint, replies[-1])
    except asyncio.TimeoutError:
        connection.close()
        raise TransportError(f"{endpoint} accepted the connection but did not answer") from None
    except BaseException:
        connection.close()
        raise
    return connection


def _ignore_reply(reply: Any) -> None:
    """The reply callback of a health check's PING: that an answer came is what counts."""
