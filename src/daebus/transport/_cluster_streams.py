"""The stream commands of durable channels on a cluster, each sent to its stream's shard.

The same commands as :mod:`._redis_streams`, through redis-py's ``RedisCluster`` (which
routes each by its one key) rather than the single node's connections.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import redis.cluster
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import RedisClusterException, RedisError

from ..exceptions import TransportError
from ._cluster_seeds import ClusterSeeds
from ._redis_streams import MAX_READ_BLOCK, keep_one
from ._replicas import (
    DEFAULT_REPLICA_TIMEOUT_MS,
    MAX_REPLICA_TIMEOUT_MS,
    check_acknowledged,
    check_replicas,
    wait_command,
)
from ._resp import SILENCE_TIMEOUT, RespConnection, open_connection, pack
from ._resp_blocking import BlockingConnection
from ._server_clock import ServerClock
from ._stream_groups import Command, StreamGroups
from ._streams import entries_of, flat_fields
from .base import StreamEntry

__all__ = ["REDIS_ERRORS", "ClusterStreams"]

#: What redis-py raises: its cluster client's own errors (no node reachable, a slot not
#: covered) are not RedisErrors.
REDIS_ERRORS = (RedisError, RedisClusterException)


class ClusterStreams(StreamGroups):
    """The stream commands for a cluster transport that has the means below."""

    _closed: bool
    _seeds: ClusterSeeds
    #: (stream, group) -> the connection its XREADGROUP ... BLOCK waits on.
    _stream_readers: dict[tuple[str, str], RespConnection]
    #: node name -> its clock
    _clocks: dict[str, ServerClock]

    @abstractmethod
    async def _now_ms(self, key: str) -> int:
        """Now on the clock of the node that holds ``key``."""

    @abstractmethod
    def _node_of(self, key: str) -> ClusterNode:
        """The master that holds ``key``'s slot."""

    @abstractmethod
    async def _refresh_slots(self, *, force: bool = False) -> None:
        """Ask the cluster for its slot map again (rate-limited unless ``force``)."""

    @abstractmethod
    def _blocking_client(self) -> redis.cluster.RedisCluster:
        """The blocking client of other threads."""

    @abstractmethod
    def _blocking(self, *args: str | bytes | int, **options: Any) -> Any:
        """One command from any thread."""

    @abstractmethod
    def _blocking_pipeline(self, *commands: Command) -> list[Any]:
        """Several commands from any thread; errors raised."""

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
        """``XADD stream MAXLEN ~ maxlen * fields...`` [then ``XTRIM ... MINID``] on its shard.

        With ``replicas``, they and a ``WAIT`` go on a connection of their own to the
        stream's master: ``WAIT`` counts the replicas of the node and the connection it
        is sent on, which redis-py's cluster client would send to every master.
        """
        add = ("XADD", stream, "MAXLEN", "~", maxlen, "*", *flat_fields(fields))
        commands: list[Command] = [add]
        if max_age_ms is not None:
            oldest = await self._now_ms(stream) - max_age_ms
            commands.append(("XTRIM", stream, "MINID", "~", oldest))
        if replicas:
            return await self._add_acknowledged(stream, commands, replicas, replica_timeout_ms)
        if max_age_ms is None:
            return bytes(await self._command(*add)).decode()
        replies = await self._pipeline(*commands)
        return bytes(replies[0]).decode()

    async def _add_acknowledged(
        self, stream: str, commands: list[Command], replicas: int, timeout_ms: int
    ) -> str:
        check_replicas(replicas, timeout_ms)
        node = self._node_of(stream)
        # Kept with the readers (no stream is named ""), closed with them.
        key = ("", node.name)
        writer = self._stream_readers.get(key)
        if writer is None or not writer.is_open:
            try:
                writer = await open_connection(
                    self._seeds.endpoint(node.host, int(node.port)),
                    silence_timeout=SILENCE_TIMEOUT + MAX_REPLICA_TIMEOUT_MS / 1000,
                )
            except TransportError:
                await self._refresh_slots()
                raise
            if self._closed:
                writer.close()
                raise TransportError(f"{self!r} is closed")
            writer = keep_one(self._stream_readers, key, writer)
        replies = await asyncio.gather(
            *(writer.send(*command) for command in commands),
            writer.send(*wait_command(replicas, timeout_ms)),
            return_exceptions=True,  # every one is answered: no error goes unread
        )
        for reply in replies:
            if isinstance(reply, TransportError):
                if not writer.is_open or "MOVED" in str(reply):
                    self._drop_reader(*key, writer)
                    await self._refresh_slots(force="MOVED" in str(reply))
                raise TransportError(f"XADD to {stream!r} failed: {reply}") from reply
        check_acknowledged(replies[-1], replicas, timeout_ms, f"{stream!r} on {node.name}")
        return bytes(replies[0]).decode()  # type: ignore[arg-type]  # errors raised above

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
        """:meth:`stream_add` from any thread, on the blocking client."""
        return self.stream_add_many_blocking(
            [(stream, fields)],
            maxlen,
            max_age_ms=max_age_ms,
            replicas=replicas,
            replica_timeout_ms=replica_timeout_ms,
        )[0]

    def stream_add_many_blocking(
        self,
        entries: Sequence[tuple[str, dict[str, bytes]]],
        maxlen: int,
        *,
        max_age_ms: int | None = None,
        replicas: int = 0,
        replica_timeout_ms: int = DEFAULT_REPLICA_TIMEOUT_MS,
    ) -> list[str]:
        """Every ``XADD`` in one pipeline, then an ``XTRIM`` per stream with ``max_age_ms``.

        With ``replicas``, the entries of each master go to it on a connection made for
        them, followed by one ``WAIT``.
        """
        if not entries:
            return []
        commands: list[Command] = [
            ("XADD", stream, "MAXLEN", "~", maxlen, "*", *flat_fields(fields))
            for stream, fields in entries
        ]
        trims: list[Command] = []
        if max_age_ms is not None:
            for stream in dict.fromkeys(stream for stream, _ in entries):
                oldest = self._now_ms_blocking(stream) - max_age_ms
                trims.append(("XTRIM", stream, "MINID", "~", oldest))
        if replicas:
            return self._add_acknowledged_blocking(commands, trims, replicas, replica_timeout_ms)
        replies = self._blocking_pipeline(*commands, *trims)
        return [bytes(reply).decode() for reply in replies[: len(entries)]]

    def _add_acknowledged_blocking(
        self, adds: list[Command], trims: list[Command], replicas: int, timeout_ms: int
    ) -> list[str]:
        """Each master's ``XADD``s and ``XTRIM``s then ``WAIT``, on a connection made for it."""
        check_replicas(replicas, timeout_ms)
        client = self._blocking_client()
        by_node: dict[str, tuple[ClusterNode, list[int], list[Command]]] = {}
        for index, command in enumerate([*adds, *trims]):
            try:
                node = client.get_node_from_key(str(command[1]))  # type: ignore[no-untyped-call]
            except REDIS_ERRORS as exc:
                raise TransportError(f"no node serves {command[1]!r}: {exc}") from exc
            _, indexes, commands = by_node.setdefault(node.name, (node, [], []))
            indexes.append(index)
            commands.append(command)
        replies: list[Any] = [None] * (len(adds) + len(trims))
        for node, indexes, commands in by_node.values():
            connection = BlockingConnection(
                self._seeds.endpoint(node.host, int(node.port)),
                SILENCE_TIMEOUT + timeout_ms / 1000,
            )
            try:
                answers = connection.pipeline(
                    [pack(*command) for command in commands]
                    + [pack(*wait_command(replicas, timeout_ms))]
                )
                for answer in answers:
                    if isinstance(answer, TransportError):
                        raise answer
            except TransportError as exc:
                # Gone, or not its master any more: the next write goes where the map
                # read again says.
                with contextlib.suppress(*REDIS_ERRORS):
                    client.nodes_manager.initialize()
                raise TransportError(f"XADD failed on {node.name}: {exc}") from exc
            finally:
                connection.close()
            for index, answer in zip(indexes, answers, strict=False):
                replies[index] = answer
            check_acknowledged(answers[-1], replicas, timeout_ms, node.name)
        return [bytes(reply).decode() for reply in replies[: len(adds)]]

    def _now_ms_blocking(self, key: str) -> int:
        """:meth:`_now_ms` from any thread."""
        try:
            client = self._blocking_client()
            node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
        except REDIS_ERRORS as exc:
            raise TransportError(f"no node serves {key!r}: {exc}") from exc
        clock = self._clocks.setdefault(node.name, ServerClock())
        now = clock.now_ms()
        if now is None:
            clock.learn(self._blocking("TIME", target_nodes=node))
            now = clock.now_ms()
            assert now is not None
        return now

    async def stream_read(
        self, stream: str, group: str, consumer: str, count: int, block_ms: int
    ) -> list[StreamEntry]:
        """``XREADGROUP`` on a connection of ``(stream, group)``'s own, to its master.

        As on a single node: the wait is at most :data:`~._redis_streams.MAX_READ_BLOCK`
        seconds, and a read cancelled mid-wait drops its connection, whose next reply
        would answer the wrong read. A read that fails because the node is gone or no
        longer serves the stream's slot (a failover, a moved slot) drops its connection
        too and has the slot map read again: the next read goes where it says.
        """
        reader = self._stream_readers.get((stream, group))
        if reader is None or not reader.is_open:
            node = self._node_of(stream)
            try:
                reader = await open_connection(
                    self._seeds.endpoint(node.host, int(node.port)),
                    silence_timeout=SILENCE_TIMEOUT + MAX_READ_BLOCK,
                )
            except TransportError:
                await self._refresh_slots()
                raise
            if self._closed:
                reader.close()
                raise TransportError(f"{self!r} is closed")
            self._stream_readers[stream, group] = reader
        block_ms = min(block_ms, int(MAX_READ_BLOCK * 1000))
        try:
            reply = await reader.send(
                "XREADGROUP", "GROUP", group, consumer, "COUNT", count, "BLOCK", block_ms,
                "STREAMS", stream, ">",
            )  # fmt: skip
        except asyncio.CancelledError:
            self._drop_reader(stream, group, reader)
            raise
        except TransportError as exc:
            if not reader.is_open or "MOVED" in str(exc):
                self._drop_reader(stream, group, reader)
                await self._refresh_slots(force="MOVED" in str(exc))
            raise
        return entries_of(reply[0][1]) if reply else []

    def _drop_reader(self, stream: str, group: str, reader: RespConnection) -> None:
        if self._stream_readers.get((stream, group)) is reader:
            del self._stream_readers[stream, group]
        reader.close()
