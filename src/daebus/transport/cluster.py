"""Valkey/Redis Cluster transport: sharded pub/sub, and every key on its slot's shard.

``redis+cluster://host1:port1,host2:port2`` names seed nodes; redis-py's asyncio
``RedisCluster`` learns the rest of the cluster from them and sends each command to the
master of its key's slot. Channels ride sharded pub/sub (``SPUBLISH``/``SSUBSCRIBE``):
a message goes to its channel's shard only, where classic ``PUBLISH`` would go to every
node. Sharded pub/sub has no patterns, so a pattern subscription is refused.

Every command this transport sends names one key (a stream, a claim, a record, an
entry), so the key names of :mod:`daebus.protocol` need no hash tags: each lives on its
own slot's shard. When a master fails over (or a slot moves), the subscriptions and the
durable reads follow their slots to the node that serves them now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import Any

import redis
import redis.cluster
from redis.asyncio.cluster import ClusterNode, RedisCluster

from ..exceptions import SetupError, TransportError
from ._cluster_seeds import CLUSTER_SCHEMES, ClusterSeeds
from ._cluster_streams import REDIS_ERRORS, ClusterStreams
from ._resp import SILENCE_TIMEOUT, RespConnection
from ._server_clock import ServerClock
from ._shard_subscriber import ShardSubscriber
from ._stream_groups import Command
from .base import Delivery

__all__ = ["CLUSTER_SCHEMES", "ClusterSeeds", "ClusterTransport"]

logger = logging.getLogger(__name__)

_CONNECT_TIMEOUT = 2.0
#: How often the slot map may be asked for again while something waits for a new owner
#: (a promotion takes the cluster a node timeout or more: this keeps the wait short).
_REFRESH_EVERY = 0.25
#: The longest pause between two looks at the slot map while a subscription is not back.
_FOLLOW_MAX_DELAY = 1.0

# A GET and a write in one script, as on a single node: one key, so one slot.
_RENEW_IF_OWNER = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
)
_DELETE_IF_OWNER = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)

# The commands whose replies are parsed here from the server's own shape (as the Redis
# transport parses them), not reshaped by redis-py's response callbacks.
_RAW_REPLIES = (
    "DEL", "EVAL", "PEXPIRE", "SET", "SPUBLISH", "TIME", "XACK", "XADD",
    "XAUTOCLAIM", "XCLAIM", "XDEL", "XGROUP", "XPENDING", "XTRIM", "ZADD", "ZRANGE",
    "ZREM", "ZREMRANGEBYSCORE",
)  # fmt: skip


class ClusterTransport(ClusterStreams):
    """Pub/sub and streams over a Valkey or Redis Cluster (``redis+cluster://``).

    Commands (publishes included) go through redis-py's asyncio ``RedisCluster``, which
    routes each to its key's shard; commands queued together go in one pipeline, in
    order. Publishes and appends from other threads go through redis-py's blocking
    ``RedisCluster``, made on first use. Each master with channels on it has a
    :class:`~._shard_subscriber.ShardSubscriber`; a durable read waits on a connection
    of its own to its stream's master (the stream commands are
    :class:`~._cluster_streams.ClusterStreams`').
    """

    ends_batches = True  # the messages of one read from a shard's socket

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._seeds = ClusterSeeds.from_url(url)
        self._cluster: RedisCluster | None = None
        self._closed = False
        # The blocking client of other threads (made on first use; thread-safe).
        self._sync: redis.cluster.RedisCluster | None = None
        self._sync_lock = threading.Lock()
        # Commands (publishes included) waiting for the pipeline that sends them, in the
        # order they were made.
        self._outbox: list[tuple[Command, asyncio.Future[Any]]] = []
        self._sending: asyncio.Task[None] | None = None
        # node name -> the TIME under way to it, shared by whoever needs the node's clock
        self._asking_time: dict[str, asyncio.Future[Any]] = {}
        # node name ("host:port") -> its subscriber
        self._shards: dict[str, ShardSubscriber] = {}
        # (stream, group) -> the connection its XREADGROUP ... BLOCK waits on.
        self._stream_readers: dict[tuple[str, str], RespConnection] = {}
        # Each node has its own clock: times are read on the node that keeps the key.
        self._clocks: dict[str, ServerClock] = {}
        # Moving the channels to the masters that serve their slots now, while it runs.
        self._following: asyncio.Task[None] | None = None
        self._refreshed_at = float("-inf")  # loop time of the last look at the slot map

    def __repr__(self) -> str:
        return f"<ClusterTransport {self.shown_url}>"

    # -- lifecycle -------------------------------------------------------------------
    async def connect(self) -> None:
        """Learn the cluster's slots from a seed node (idempotent)."""
        self._closed = False
        if self._cluster is not None:
            return
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self._seeds.nodes],
            username=self._seeds.username,
            password=self._seeds.password,
            socket_connect_timeout=_CONNECT_TIMEOUT,
            socket_timeout=SILENCE_TIMEOUT,
        )
        for command in _RAW_REPLIES:
            cluster.response_callbacks.pop(command, None)
        try:
            await cluster.initialize()
        except REDIS_ERRORS as exc:
            await cluster.aclose()
            raise TransportError(f"cannot reach the cluster {self.shown_url}: {exc}") from exc
        if self._closed:  # closed while it connected
            await cluster.aclose()
            raise TransportError(f"{self!r} is closed")
        self._cluster = cluster

    async def close(self) -> None:
        """Drop every subscription and connection (idempotent)."""
        self._closed = True
        self._subscriptions.clear()
        sending, self._sending = self._sending, None
        if sending is not None:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
        self._fail_outbox(TransportError(f"{self!r} closed"))
        following, self._following = self._following, None
        if following is not None:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
        shards, self._shards = list(self._shards.values()), {}
        for shard in shards:
            await shard.close()
        readers, self._stream_readers = list(self._stream_readers.values()), {}
        for reader in readers:
            reader.close()
            await asyncio.shield(reader.lost)
        cluster, self._cluster = self._cluster, None
        if cluster is not None:
            await cluster.aclose()
        self.close_blocking()

    def close_blocking(self) -> None:
        """Close the blocking client of other threads (made again if used again)."""
        with self._sync_lock:
            sync, self._sync = self._sync, None
        if sync is not None:
            sync.close()

    def _client(self) -> RedisCluster:
        cluster = self._cluster
        if cluster is None or self._closed:
            raise TransportError(f"{self!r} is closed or not connected")
        return cluster

    def _send(self, command: Command) -> asyncio.Future[Any]:
        """Queue one command; what is queued meanwhile goes in one pipeline, in order.

        redis-py sends a pipeline's commands to each shard in order, on one connection:
        so the commands of one key (and the messages of one channel) reach its shard in
        the order they were made, as on the Redis transport's one connection.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._cluster is None or self._closed:
            future.set_exception(TransportError(f"{self!r} is closed or not connected"))
            return future
        self._outbox.append((command, future))
        if self._sending is None or self._sending.done():
            self._sending = loop.create_task(
                self._send_outbox(), name=f"daebus-cluster-commands {self.shown_url}"
            )
        return future

    async def _send_outbox(self) -> None:
        # One pipeline at a time: the next waits for this one to be answered.
        while self._outbox:
            batch, self._outbox = self._outbox, []
            try:
                pipeline = self._client().pipeline(transaction=False)
                for command, _ in batch:
                    pipeline.execute_command(*command)
                replies = await pipeline.execute(raise_on_error=False)
            except (*REDIS_ERRORS, TransportError) as exc:
                replies = [exc] * len(batch)
            except asyncio.CancelledError:  # closed: what was sent is not waited for
                for _, future in batch:
                    if not future.done():
                        future.set_exception(TransportError(f"{self!r} closed"))
                raise
            for (command, future), reply in zip(batch, replies, strict=True):
                if future.done():
                    continue
                if isinstance(reply, TransportError):
                    future.set_exception(reply)
                elif isinstance(reply, BaseException):
                    future.set_exception(TransportError(f"{command[0]!s} failed: {reply}"))
                else:
                    future.set_result(reply)

    def _fail_outbox(self, error: TransportError) -> None:
        outbox, self._outbox = self._outbox, []
        for _, future in outbox:
            if not future.done():
                future.set_exception(error)

    async def _command(self, *args: str | bytes | int) -> Any:
        """One command, sent to its key's shard with whatever else is queued."""
        return await self._send(args)

    async def _pipeline(self, *commands: Command) -> list[Any]:
        """Several commands, sent together; their replies (the first error raised)."""
        replies = await asyncio.gather(
            *(self._send(command) for command in commands), return_exceptions=True
        )
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies

    def _node_of(self, key: str) -> ClusterNode:
        """The master that holds ``key``'s slot, as the cluster last said."""
        try:
            node = self._client().get_node_from_key(key)
        except REDIS_ERRORS as exc:
            raise TransportError(f"no node serves {key!r}: {exc}") from exc
        if node is None:
            raise TransportError(f"no node serves {key!r}")
        return node

    # -- publishing ------------------------------------------------------------------
    def publish_nowait(self, channel: str, data: bytes) -> asyncio.Future[int]:
        """Queue an ``SPUBLISH`` to the channel's shard; the future gets the receiver count."""
        return self._send(("SPUBLISH", channel, data))

    async def publish_many(self, messages: Sequence[tuple[str, bytes]]) -> list[int]:
        """Publish several messages in order (in one pipeline, unless one is under way)."""
        futures = [self.publish_nowait(channel, data) for channel, data in messages]
        return [int(count) for count in await asyncio.gather(*futures)]

    def blocking_client(self) -> redis.Redis:
        """Refused: the app's ``cache`` is a single-node client (see NO_CACHE_ON_A_CLUSTER).

        Raises:
            SetupError: always, saying why.
        """
        from . import NO_CACHE_ON_A_CLUSTER

        raise SetupError(NO_CACHE_ON_A_CLUSTER)

    def publish_blocking(self, channel: str, data: bytes, timeout: float | None = None) -> int:
        """``SPUBLISH`` from any thread, on the blocking client.

        ``timeout`` is not honoured per call: the client's own (5 s) bounds each wait.
        """
        return int(self._blocking("SPUBLISH", channel, data))

    def publish_many_blocking(self, messages: Sequence[tuple[str, bytes]]) -> list[int]:
        """``SPUBLISH`` a batch from any thread, in one pipeline (in order per shard)."""
        if not messages:
            return []
        replies = self._blocking_pipeline(*(("SPUBLISH", c, d) for c, d in messages))
        return [int(reply) for reply in replies]

    def _blocking_client(self) -> redis.cluster.RedisCluster:
        """The blocking client; it needs no :meth:`connect` (a script's publisher makes none)."""
        with self._sync_lock:
            if self._closed:
                raise TransportError(f"{self!r} is closed")
            if self._sync is None:
                self._sync = redis.cluster.RedisCluster(
                    startup_nodes=[
                        redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call]
                        for host, port in self._seeds.nodes
                    ],
                    username=self._seeds.username,
                    password=self._seeds.password,
                    socket_connect_timeout=_CONNECT_TIMEOUT,
                    socket_timeout=SILENCE_TIMEOUT,
                )
            return self._sync

    def _blocking(self, *args: str | bytes | int, **options: Any) -> Any:
        """One command from any thread, sent to its key's shard (or to ``target_nodes``)."""
        try:
            client = self._blocking_client()
            return client.execute_command(*args, **options)  # type: ignore[no-untyped-call]
        except REDIS_ERRORS as exc:
            raise TransportError(f"{args[0]!s} failed: {exc}") from exc

    def _blocking_pipeline(self, *commands: Command) -> list[Any]:
        """Several commands from any thread, one round trip per shard; errors raised."""
        try:
            pipeline = self._blocking_client().pipeline(  # type: ignore[no-untyped-call]
                transaction=False
            )
            for command in commands:
                pipeline.execute_command(*command)
            return list(pipeline.execute())
        except REDIS_ERRORS as exc:
            raise TransportError(f"{commands[0][0]!s} failed: {exc}") from exc

    # -- the instances of a service ---------------------------------------------------
    async def claim(self, key: str, owner: str, ttl_ms: int) -> bool:
        """``SET key owner NX PX ttl_ms`` on the key's shard: True if this call set it."""
        return await self._command("SET", key, owner, "NX", "PX", ttl_ms) is not None

    async def renew_claim(self, key: str, owner: str, ttl_ms: int) -> bool:
        """``PEXPIRE`` the key if its value is still ``owner``: one script, so atomic."""
        return bool(await self._command("EVAL", _RENEW_IF_OWNER, 1, key, owner, ttl_ms))

    async def release_claim(self, key: str, owner: str) -> bool:
        """``DEL`` the key if its value is still ``owner``: one script, so atomic."""
        return bool(await self._command("EVAL", _DELETE_IF_OWNER, 1, key, owner))

    async def _now_ms(self, key: str) -> int:
        """Now on the clock of the node that holds ``key`` (asked with ``TIME`` if need be)."""
        node = self._node_of(key)
        clock = self._clocks.setdefault(node.name, ServerClock())
        now = clock.now_ms()
        if now is None:
            # One TIME per node at a time, however many wait for it.
            asking = self._asking_time.get(node.name)
            if asking is None:
                asking = self._asking_time[node.name] = asyncio.ensure_future(
                    self._client().execute_command("TIME", target_nodes=node)
                )
                asking.add_done_callback(lambda done: self._asked_time(node.name, done))
            try:
                clock.learn(await asyncio.shield(asking))
            except REDIS_ERRORS as exc:
                raise TransportError(f"TIME failed on {node.name}: {exc!r}") from exc
            now = clock.now_ms()
            assert now is not None
        return now

    def _asked_time(self, name: str, done: asyncio.Future[Any]) -> None:
        if self._asking_time.get(name) is done:
            del self._asking_time[name]
        if not done.cancelled():
            done.exception()  # seen here: whoever waited for it may have given up

    async def renew_member(self, key: str, member: str, ttl_ms: int) -> list[str]:
        """Score ``member`` with its expiry on the node's clock; prune; list the members."""
        now = await self._now_ms(key)
        replies = await self._pipeline(
            ("ZREMRANGEBYSCORE", key, "-inf", now),
            ("ZADD", key, now + ttl_ms, member),
            ("PEXPIRE", key, ttl_ms),
            ("ZRANGE", key, 0, -1),
        )
        return [bytes(name).decode("utf-8", "replace") for name in replies[-1]]

    async def remove_member(self, key: str, member: str) -> None:
        """``ZREM key member``."""
        await self._command("ZREM", key, member)

    async def put_entry(self, index: str, key: str, value: bytes, ttl_ms: int) -> None:
        """``SET key value PX ttl_ms``; ``key`` scored in ``index`` with its expiry; prune.

        The entry and its index may be on two shards; expiries are scored on the
        index's node's clock, which prunes them.
        """
        now = await self._now_ms(index)
        await self._pipeline(
            ("SET", key, value, "PX", ttl_ms),
            ("ZADD", index, now + ttl_ms, key),
            ("ZREMRANGEBYSCORE", index, "-inf", now),
        )

    async def drop_entry(self, index: str, key: str) -> None:
        """``DEL key`` and ``ZREM index key``."""
        await self._pipeline(("DEL", key), ("ZREM", index, key))

    # -- subscribing -----------------------------------------------------------------
    async def _add(self, name: str, pattern: bool) -> None:
        if pattern:
            raise SetupError(
                f"cannot listen to the pattern {name!r} on a cluster: daebus's cluster "
                "transport uses sharded pub/sub, which has no patterns (serving one would "
                "take classic pub/sub, every message sent to every node). Listen to the "
                "channels by name"
            )
        if self._closed or self._cluster is None:
            raise TransportError(f"{self!r} is closed: connect() it again first")
        try:
            await self._shard_of(self._node_of(name)).add(name)
        except TransportError as exc:
            if "MOVED" not in str(exc):
                raise
            # The slot map was out of date: ask again, and subscribe where it says.
            await self._refresh_slots(force=True)
            await self._shard_of(self._node_of(name)).add(name)

    def _shard_of(self, node: ClusterNode) -> ShardSubscriber:
        shard = self._shards.get(node.name)
        if shard is None:
            shard = self._shards[node.name] = ShardSubscriber(
                self._seeds.endpoint(node.host, int(node.port)),
                self._on_message,
                self._end_batch,
                self._shard_lost,
                self._channel_moved,
            )
        return shard

    async def _remove(self, name: str, pattern: bool) -> None:
        for shard in list(self._shards.values()):
            if name in shard.channels:
                await shard.remove(name)

    # -- following the slots ---------------------------------------------------------
    def _shard_lost(self, error: TransportError) -> None:
        # Waiting callers are told at once; the node may be gone for good (a failover),
        # so where its channels live is looked up again until they are all back.
        self._disconnected(error)
        self._follow_slots()

    def _channel_moved(self, channel: str) -> None:
        self._follow_slots()

    def _follow_slots(self) -> None:
        if self._closed or (self._following is not None and not self._following.done()):
            return
        self._following = asyncio.get_running_loop().create_task(
            self._follow(), name=f"daebus-cluster-slots {self.shown_url}"
        )

    async def _follow(self) -> None:
        """Until every channel is subscribed on the master of its slot: look, move, wait.

        A killed master's slots keep its address in the map until the cluster promotes
        its replica (a node timeout or more), so the map is asked for again and again.
        """
        delay = _REFRESH_EVERY
        while not self._closed:
            await self._refresh_slots()
            try:
                await self._regroup()
            except (TransportError, *REDIS_ERRORS) as exc:
                logger.debug("cannot follow the channels to their slots yet: %s", exc)
            if self._settled():
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, _FOLLOW_MAX_DELAY)

    def _settled(self) -> bool:
        wanted = self._wanted_channels()
        subscribed = set().union(*(shard.channels for shard in self._shards.values()))
        return wanted <= subscribed and self.receiving

    def _wanted_channels(self) -> set[str]:
        return {name for pattern, name in self._subscriptions if not pattern}

    async def _regroup(self) -> None:
        """Subscribe each channel on the master of its slot; drop shards left empty."""
        wanted = self._wanted_channels()
        for name, shard in list(self._shards.items()):
            for channel in list(shard.channels):
                if channel not in wanted or self._node_of(channel).name != name:
                    await shard.remove(channel)
        for channel in wanted:
            node = self._node_of(channel)
            shard = self._shard_of(node)
            if channel not in shard.channels:
                logger.info("subscribing %r on %s, the master of its slot now", channel, node.name)
                with contextlib.suppress(TransportError):  # refused: looked at again
                    await shard.add(channel)
        for name, shard in list(self._shards.items()):
            if not shard.channels and self._shards.get(name) is shard:
                del self._shards[name]
                await shard.close()

    async def _refresh_slots(self, *, force: bool = False) -> None:
        """Ask a node for the slot map again (at most every :data:`_REFRESH_EVERY`)."""
        cluster = self._cluster
        now = asyncio.get_running_loop().time()
        if cluster is None or (not force and now - self._refreshed_at < _REFRESH_EVERY):
            return
        self._refreshed_at = now
        try:
            await cluster.nodes_manager.initialize()
        except REDIS_ERRORS as exc:
            logger.debug("cannot read the slot map of %s yet: %s", self.shown_url, exc)

    def _on_message(self, message: list[Any]) -> Any:
        # [b"smessage", channel, data]
        return self._deliver(Delivery(message[1].decode("utf-8", "replace"), message[2]))

    @property
    def receiving(self) -> bool:
        """False while the connection to a shard with subscriptions is being re-made."""
        return all(shard.receiving for shard in self._shards.values())

    async def until_receiving(self) -> None:
        """Return once every shard's subscriber connection is up again.

        A shard whose master died is dropped once its channels moved to the promoted
        replica, whose shard is then waited for.
        """
        while not self.receiving:
            shards = [shard for shard in self._shards.values() if not shard.receiving]
            # Looked at again now and then: the shards change while channels move.
            waiting = [asyncio.ensure_future(shard.until_receiving()) for shard in shards]
            try:
                await asyncio.wait(
                    waiting, timeout=_FOLLOW_MAX_DELAY, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for waiter in waiting:
                    waiter.cancel()
