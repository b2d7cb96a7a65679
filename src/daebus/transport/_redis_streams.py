"""The stream commands of the Redis transport: what durable channels send to the server.

A mixin of :class:`~daebus.transport.redis.RedisTransport`, kept apart from its pub/sub
so that each reads as one concept. Commands go on the transport's publishing connection
(pipelined with what else it sends), or on a thread's own blocking connection, except
the blocking ``XREADGROUP``: each ``(stream, group)`` waits on a connection of its own,
so that a wait holds up nothing else.
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

from ..exceptions import TransportError
from ._replicas import (
    DEFAULT_REPLICA_TIMEOUT_MS,
    MAX_REPLICA_TIMEOUT_MS,
    check_acknowledged,
    check_replicas,
    wait_command,
)
from ._resp import SILENCE_TIMEOUT, RespConnection, pack
from ._resp_blocking import BlockingConnection
from ._server_clock import ServerClock
from ._stream_groups import Command, StreamGroups
from ._streams import entries_of, flat_fields
from .base import StreamEntry

__all__ = ["ACKNOWLEDGED_WRITER", "MAX_READ_BLOCK", "RedisStreams", "keep_one"]

#: The longest a read for new entries waits on the server, in seconds: a consumer with
#: nothing to do reads this seldom.
MAX_READ_BLOCK = 30.0
#: Where the connection of writes waited on with ``WAIT`` is kept: with the readers
#: (no stream is named ""), closed with them. ``WAIT`` blocks the connection it is sent
#: on, so it never goes on the publishing connection, which everything else shares.
ACKNOWLEDGED_WRITER = ("", "")


class RedisStreams(StreamGroups):
    """Redis's stream commands for a transport that has the connections below."""

    _closed: bool
    #: (stream, group) -> the connection its XREADGROUP ... BLOCK waits on.
    _stream_readers: dict[tuple[str, str], RespConnection]
    _server_clock: ServerClock

    @abstractmethod
    def _ready_publisher(self) -> RespConnection | None:
        """The publishing connection, if it is open with nothing queued before it."""

    @abstractmethod
    async def _open_connection(self, **options: Any) -> RespConnection:
        """A new connection to the server."""

    @abstractmethod
    async def _open_publisher(self) -> RespConnection:
        """The publishing connection, opened if need be."""

    @abstractmethod
    def _thread_connection(self) -> BlockingConnection:
        """The calling thread's own blocking connection."""

    @abstractmethod
    async def _server_now_ms(self, publisher: RespConnection) -> int:
        """Now on the server's clock, in ms (asking ``publisher`` if need be)."""

    async def stream_add(
        self,
        stream: str,
        fields: dict[str, bytes],
        maxlen: int,
        *,
        max_age_ms: int | None = None,
        replicas: int = 0,
        replica_timeout_ms: int = DEFAULT_REPLICA_TIMEOUT_MS,
    ) -> str:
        """``XADD stream MAXLEN ~ maxlen * fields...`` on the publishing connection.

        With ``max_age_ms``, ``XTRIM stream MINID ~ <now - max_age_ms>`` follows in the
        same write (``XADD`` takes one of ``MAXLEN`` and ``MINID``, never both); now is
        the server's time, since the ids it compares are. With ``replicas``, the
        commands and a ``WAIT`` go on a connection of their own instead.
        """
        add = _add_command(stream, fields, maxlen)
        if replicas:
            return await self._add_acknowledged(
                stream, add, max_age_ms, replicas, replica_timeout_ms
            )
        if max_age_ms is None:
            return bytes(await self._command(*add)).decode()
        publisher = self._ready_publisher() or await self._open_publisher()
        oldest = await self._server_now_ms(publisher) - max_age_ms
        replies = await asyncio.gather(
            publisher.send(*add),
            publisher.send("XTRIM", stream, "MINID", "~", oldest),
            return_exceptions=True,  # both are answered: neither error goes unread
        )
        return _added_id(stream, replies)

    async def _add_acknowledged(
        self,
        stream: str,
        add: tuple[str | bytes | int, ...],
        max_age_ms: int | None,
        replicas: int,
        timeout_ms: int,
    ) -> str:
        """``XADD`` [``XTRIM``] then ``WAIT``, on the connection of acknowledged writes."""
        check_replicas(replicas, timeout_ms)
        writer = self._stream_readers.get(ACKNOWLEDGED_WRITER)
        if writer is None or not writer.is_open:
            if self._closed:
                raise TransportError(f"{self!r} is closed")
            writer = await self._open_connection(
                silence_timeout=SILENCE_TIMEOUT + MAX_REPLICA_TIMEOUT_MS / 1000
            )
            writer = keep_one(self._stream_readers, ACKNOWLEDGED_WRITER, writer)
        commands = [add]
        if max_age_ms is not None:
            oldest = await self._server_now_ms(writer) - max_age_ms
            commands.append(("XTRIM", stream, "MINID", "~", oldest))
        replies = await asyncio.gather(
            *(writer.send(*command) for command in commands),
            writer.send(*wait_command(replicas, timeout_ms)),
            return_exceptions=True,  # every one is answered: no error goes unread
        )
        entry_id = _added_id(stream, replies[:-1])
        check_acknowledged(replies[-1], replicas, timeout_ms, repr(stream))
        return entry_id

    def stream_add_blocking(
        self,
        stream: str,
        fields: dict[str, bytes],
        maxlen: int,
        *,
        max_age_ms: int | None = None,
        replicas: int = 0,
        replica_timeout_ms: int = DEFAULT_REPLICA_TIMEOUT_MS,
    ) -> str:
        """:meth:`stream_add` from any thread, on that thread's own blocking connection."""
        if replicas:
            return self.stream_add_many_blocking(
                [(stream, fields)],
                maxlen,
                max_age_ms=max_age_ms,
                replicas=replicas,
                replica_timeout_ms=replica_timeout_ms,
            )[0]
        connection = self._thread_connection()
        add = pack(*_add_command(stream, fields, maxlen))
        try:
            if max_age_ms is None:
                return bytes(connection.command(add)).decode()
            now = self._server_now_ms_blocking(connection)
            trim = pack("XTRIM", stream, "MINID", "~", now - max_age_ms)
            replies = connection.pipeline([add, trim])
        except TransportError as exc:
            raise TransportError(f"XADD to {stream!r} failed: {exc}") from exc
        return _added_id(stream, replies)

    def stream_add_many_blocking(
        self,
        entries: Sequence[tuple[str, dict[str, bytes]]],
        maxlen: int,
        *,
        max_age_ms: int | None = None,
        replicas: int = 0,
        replica_timeout_ms: int = DEFAULT_REPLICA_TIMEOUT_MS,
    ) -> list[str]:
        """Every ``XADD`` in one write, then an ``XTRIM`` per stream with ``max_age_ms``.

        With ``replicas``, one ``WAIT`` after them all: it covers every write before it.
        """
        if not entries:
            return []
        if replicas:
            check_replicas(replicas, replica_timeout_ms)
        connection = self._thread_connection()
        commands = [pack(*_add_command(stream, fields, maxlen)) for stream, fields in entries]
        try:
            if max_age_ms is not None:
                now = self._server_now_ms_blocking(connection)
                streams = dict.fromkeys(stream for stream, _fields in entries)
                commands += [pack("XTRIM", s, "MINID", "~", now - max_age_ms) for s in streams]
            if replicas:
                commands.append(pack(*wait_command(replicas, replica_timeout_ms)))
                replies = connection.pipeline(
                    commands, timeout=SILENCE_TIMEOUT + replica_timeout_ms / 1000
                )
                waited = replies.pop()
            else:
                replies = connection.pipeline(commands)
        except TransportError as exc:
            raise TransportError(f"XADD of {len(entries)} entries failed: {exc}") from exc
        trims = replies[len(entries) :]
        ids = [
            _added_id(stream, [reply, *trims])
            for (stream, _fields), reply in zip(entries, replies, strict=False)
        ]
        if replicas:
            where = repr(entries[0][0]) if len(entries) == 1 else f"{len(entries)} streams"
            check_acknowledged(waited, replicas, replica_timeout_ms, where)
        return ids

    def _server_now_ms_blocking(self, connection: BlockingConnection) -> int:
        """Now on the server's clock, in ms (asking with ``TIME`` on ``connection`` if need be)."""
        now = self._server_clock.now_ms()
        if now is None:
            self._server_clock.learn(connection.command(pack("TIME")))
            now = self._server_clock.now_ms()
            assert now is not None
        return now

    async def stream_read(
        self, stream: str, group: str, consumer: str, count: int, block_ms: int
    ) -> list[StreamEntry]:
        """``XREADGROUP`` on the connection of ``(stream, group)`` (opened as needed).

        The wait is at most :data:`MAX_READ_BLOCK` seconds; the connection takes the
        server for gone only once it has been silent that long and
        :data:`~._resp.SILENCE_TIMEOUT` more. Cancelled mid-wait, the connection is
        dropped: the reply it owes would answer the next read.
        """
        reader = self._stream_readers.get((stream, group))
        if reader is None or not reader.is_open:
            if self._closed:
                raise TransportError(f"{self!r} is closed")
            reader = await self._open_connection(silence_timeout=SILENCE_TIMEOUT + MAX_READ_BLOCK)
            self._stream_readers[stream, group] = reader
        block_ms = min(block_ms, int(MAX_READ_BLOCK * 1000))
        try:
            reply = await reader.send(
                "XREADGROUP", "GROUP", group, consumer, "COUNT", count, "BLOCK", block_ms,
                "STREAMS", stream, ">",
            )  # fmt: skip
        except asyncio.CancelledError:
            if self._stream_readers.get((stream, group)) is reader:
                del self._stream_readers[stream, group]
            reader.close()
            raise
        return entries_of(reply[0][1]) if reply else []

    async def _pipeline(self, *commands: Command) -> list[Any]:
        """Several commands on the publishing connection, written together."""
        publisher = self._ready_publisher() or await self._open_publisher()
        return list(await asyncio.gather(*(publisher.send(*command) for command in commands)))


def _add_command(
    stream: str, fields: dict[str, bytes], maxlen: int
) -> tuple[str | bytes | int, ...]:
    return ("XADD", stream, "MAXLEN", "~", maxlen, "*", *flat_fields(fields))


def keep_one(
    connections: dict[tuple[str, str], RespConnection],
    key: tuple[str, str],
    opened: RespConnection,
) -> RespConnection:
    """Keep ``opened`` under ``key``, unless another opened meanwhile: then that one."""
    kept = connections.get(key)
    if kept is not None and kept.is_open:
        opened.close()
        return kept
    connections[key] = opened
    return opened


def _added_id(stream: str, replies: Sequence[Any]) -> str:
    """The id ``XADD`` replied, or the first error of the ``XADD`` and ``XTRIM`` replies."""
    for reply in replies:
        if isinstance(reply, TransportError):
            raise TransportError(f"XADD to {stream!r} failed: {reply}") from reply
        if isinstance(reply, BaseException):
            raise reply
    return bytes(replies[0]).decode()
