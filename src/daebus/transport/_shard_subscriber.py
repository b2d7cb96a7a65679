"""One subscriber connection to one shard of a cluster: the channels whose slots it serves.

Sharded pub/sub delivers a channel's messages only to the clients of the shard that owns
the channel's slot, so the cluster transport keeps one of these per master it has
channels on. Each keeps its connection up the way the Redis transport's subscriber
does: it reconnects to the same node with a capped backoff and subscribes every channel
again. Following a channel to another node (a slot moved, a replica promoted) is the
transport's job: this connection tells it when the node drops a channel unasked (the
``sunsubscribe`` a node sends when it loses the channel's slot) or refuses one (its
``MOVED``), and when the connection is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..exceptions import TransportError
from ._endpoint import Endpoint
from ._resp import RespConnection, open_connection, pack

__all__ = ["ShardSubscriber"]

logger = logging.getLogger(__name__)

_RECONNECT_FIRST_DELAY = 0.05
_RECONNECT_MAX_DELAY = 1.0
_STILL_DOWN_LOG_EVERY = 10.0

#: Called with each ``[b"smessage", channel, data]``; an awaitable pauses reading.
OnMessage = Callable[[list[Any]], Awaitable[None] | None]


class ShardSubscriber:
    """The channels of one node, on a connection that reconnects on its own."""

    def __init__(
        self,
        endpoint: Endpoint,
        on_message: OnMessage,
        on_batch_end: Callable[[], None],
        on_lost: Callable[[TransportError], None],
        on_moved: Callable[[str], None],
    ) -> None:
        self.endpoint = endpoint
        self.channels: set[str] = set()
        self._on_message = on_message
        self._on_batch_end = on_batch_end
        self._on_lost = on_lost
        self._on_moved = on_moved
        self._connection: RespConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        # Resolved after each attempt to (re)connect: True once everything is subscribed.
        self._attempt: asyncio.Future[bool] | None = None
        self._subscribed = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<ShardSubscriber {self.endpoint} channels={len(self.channels)}>"

    async def add(self, channel: str) -> None:
        """Subscribe ``channel`` (its slot must be this node's).

        Returns once the server confirmed it, or once a first attempt to connect failed
        (the reconnects go on, and subscribe it with the rest).

        Raises:
            TransportError: the node refused the subscription (its ``MOVED``, say).
        """
        if self._closed:
            raise TransportError(f"{self!r} is closed")
        self.channels.add(channel)
        loop = asyncio.get_running_loop()
        if self._reader is None or self._reader.done():
            self._attempt = loop.create_future()
            self._reader = loop.create_task(
                self._read_forever(), name=f"daebus-shard-reader {self.endpoint}"
            )
        connection = self._connection
        if connection is None:
            assert self._attempt is not None
            await asyncio.shield(self._attempt)
            return
        try:
            await connection.send("SSUBSCRIBE", channel)
        except TransportError:
            if connection.is_open:  # answered with an error: refused, not lost
                self.channels.discard(channel)
                raise
            # Lost: the reconnect subscribes it with everything else.

    async def remove(self, channel: str) -> None:
        """Unsubscribe ``channel`` (idempotent)."""
        self.channels.discard(channel)
        connection = self._connection
        if connection is None:
            return  # out of the set: a reconnect will not subscribe it
        # Unanswered: its confirmation comes as a push (see _on_push), like the
        # sunsubscribe a node sends unasked.
        with contextlib.suppress(TransportError):
            connection.send_unanswered(pack("SUNSUBSCRIBE", channel))

    @property
    def receiving(self) -> bool:
        """False while the connection is being re-made (messages sent meanwhile are lost)."""
        if self._reader is None or self._reader.done():
            return True
        connection = self._connection
        return self._subscribed and connection is not None and connection.is_open

    async def until_receiving(self) -> None:
        """Return once the connection is up and subscribed again (or the reader stopped)."""
        while not self.receiving and self._attempt is not None:
            await asyncio.shield(self._attempt)

    async def close(self) -> None:
        """Stop reconnecting and close the connection (idempotent)."""
        self._closed = True
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
            await asyncio.shield(connection.lost)
        self._attempted(False)

    def _stopped(self) -> bool:
        # A method, not the attribute: close() may set it while the reader awaits.
        return self._closed

    def _attempted(self, subscribed: bool) -> None:
        attempt, self._attempt = self._attempt, asyncio.get_running_loop().create_future()
        if attempt is not None and not attempt.done():
            attempt.set_result(subscribed)

    async def _subscribe_all(self, connection: RespConnection) -> None:
        # One SSUBSCRIBE per channel: channels of one command must share a slot, and a
        # node serves many slots.
        channels = list(self.channels)
        replies = await asyncio.gather(
            *(connection.send("SSUBSCRIBE", channel) for channel in channels),
            return_exceptions=True,
        )
        for channel, reply in zip(channels, replies, strict=True):
            if isinstance(reply, BaseException):
                if not connection.is_open:
                    raise reply
                if "MOVED" in str(reply) and channel in self.channels:
                    # Its slot is served elsewhere now: the transport follows it there.
                    self.channels.discard(channel)
                    self._on_moved(channel)
                    continue
                logger.error("%s refused the subscription to %r: %s", self.endpoint, channel, reply)

    def _on_push(self, message: list[Any]) -> Awaitable[None] | None:
        if message[0] != b"sunsubscribe":
            return self._on_message(message)
        channel = message[1].decode("utf-8", "replace")
        if channel in self.channels:
            # Not asked for (remove() takes the channel out first): the node lost the
            # channel's slot, to a promoted replica or to another master.
            self.channels.discard(channel)
            logger.info("%s dropped the channel %r: following its slot", self.endpoint, channel)
            self._on_moved(channel)
        return None

    async def _read_forever(self) -> None:
        """Connect, subscribe everything, wait for the connection to drop, repeat."""
        delay = _RECONNECT_FIRST_DELAY
        down_since: float | None = None
        last_report = 0.0
        while not self._closed:
            try:
                connection = await open_connection(
                    self.endpoint,
                    on_push=self._on_push,
                    on_pushes_end=self._on_batch_end,
                    ping_when_idle=True,
                )
                self._connection = connection
                try:
                    await self._subscribe_all(connection)
                except BaseException:
                    self._connection = None
                    connection.close()
                    raise
            except TransportError as exc:
                self._attempted(False)
                now = time.monotonic()
                if down_since is None:
                    logger.warning("cannot subscribe on %s (%s); retrying", self.endpoint, exc)
                    down_since = last_report = now
                elif now - last_report >= _STILL_DOWN_LOG_EVERY:
                    logger.warning(
                        "still cannot subscribe on %s after %.0f s (%s); retrying every %.1f s",
                        self.endpoint,
                        now - down_since,
                        exc,
                        delay,
                    )
                    last_report = now
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RECONNECT_MAX_DELAY)
                continue
            self._subscribed = True
            self._attempted(True)
            if down_since is not None:
                logger.warning(
                    "subscribed again on %s after %.1f s: %d channel(s)",
                    self.endpoint,
                    time.monotonic() - down_since,
                    len(self.channels),
                )
            down_since = None
            delay = _RECONNECT_FIRST_DELAY
            error = await asyncio.shield(connection.lost)
            self._subscribed = False
            if self._connection is connection:
                self._connection = None
            if self._stopped():
                return
            down_since = last_report = time.monotonic()
            reason = str(error) if error else "closed by the server"
            logger.warning(
                "lost the subscriber connection to %s (%s); reconnecting", self.endpoint, reason
            )
            self._on_lost(TransportError(f"lost the connection to {self.endpoint}: {reason}"))
