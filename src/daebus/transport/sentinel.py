"""The Redis transport on the master that Sentinel names, found again at every connect.

A :class:`SentinelTransport` is a :class:`~.redis.RedisTransport` whose address is not
fixed: each connection it makes (the subscriber, the publisher, a stream reader, a
thread's blocking connection, a caller's reply reader) first asks the sentinels where
the master is, through redis-py's ``Sentinel``, then checks with ``ROLE`` that the node
it reached is a master. When the master fails, its connections drop, the transport's
own reconnect loops ask again, and land on the replica the sentinels promoted. The
cache (``blocking_client``) is redis-py's ``Sentinel.master_for`` client, which asks the
sentinels at each new connection too.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import redis
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..exceptions import TransportError
from ._endpoint import Endpoint, NotMasterError
from ._resp import RespConnection, open_connection
from ._sentinel_url import SentinelSeeds
from .redis import _CONNECT_TIMEOUT, RedisTransport

__all__ = ["SentinelTransport", "sentinel_client"]

logger = logging.getLogger(__name__)

#: How many times a connection asks the sentinels again when the node they named turns
#: out to be a replica (a demoted master back before the sentinels caught up).
_REPLICA_RETRIES = 3
_REPLICA_RETRY_DELAY = 0.1


def _sentinel_options(seeds: SentinelSeeds) -> dict[str, Any]:
    """How redis-py connects to the sentinels themselves: briefly, without retries."""
    return {
        "username": seeds.sentinel_username,
        "password": seeds.sentinel_password,
        "socket_connect_timeout": _CONNECT_TIMEOUT,
        "socket_timeout": _CONNECT_TIMEOUT,
    }


def sentinel_client(url: str, **options: Any) -> redis.Redis:
    """A blocking redis-py client of the master the sentinels of ``url`` name.

    redis-py's ``Sentinel.master_for``: each new connection asks the sentinels, so the
    client follows a failover. ``options`` are redis-py's client options.
    """
    seeds = SentinelSeeds.from_url(url)
    sentinel = redis.sentinel.Sentinel(
        list(seeds.sentinels),
        sentinel_kwargs={**_sentinel_options(seeds), "retry": Retry(NoBackoff(), 0)},
    )
    client: redis.Redis = sentinel.master_for(
        seeds.master_name,
        db=seeds.db,
        username=seeds.username,
        password=seeds.password,
        **options,
    )
    return client


class SentinelTransport(RedisTransport):
    """Pub/sub and streams on the master of a ``redis+sentinel://`` URL, across failovers."""

    def __init__(self, url: str) -> None:
        self._seeds = SentinelSeeds.from_url(url)
        super().__init__(url, endpoint=self._seeds.endpoint())
        self._resolve_blocking = self._master_blocking
        self._sentinel_lock = threading.Lock()
        self._sync_sentinel: redis.sentinel.Sentinel | None = None
        # redis-py's asyncio clients belong to the loop that made them.
        self._async_sentinel: redis.asyncio.sentinel.Sentinel | None = None
        self._sentinel_loop: asyncio.AbstractEventLoop | None = None
        self._last_master: str | None = None  # where the last lookup found it, for the log

    def __repr__(self) -> str:
        return f"<SentinelTransport {self.shown_url}>"

    # -- where the master is --------------------------------------------------------
    async def _master(self) -> Endpoint:
        """The master's address, as the first sentinel that knows it healthy says."""
        loop = asyncio.get_running_loop()
        sentinel = self._async_sentinel
        if sentinel is None or self._sentinel_loop is not loop:
            sentinel = self._async_sentinel = redis.asyncio.sentinel.Sentinel(
                list(self._seeds.sentinels),
                sentinel_kwargs={
                    **_sentinel_options(self._seeds),
                    "retry": redis.asyncio.retry.Retry(NoBackoff(), 0),
                },
            )
            self._sentinel_loop = loop
        try:
            host, port = await sentinel.discover_master(self._seeds.master_name)
        except (redis.RedisError, OSError) as exc:
            raise TransportError(f"no sentinel names a master: {exc}") from exc
        return self._found(str(host), int(port))

    def _master_blocking(self) -> Endpoint:
        """:meth:`_master` for the blocking connections, on redis-py's blocking client."""
        with self._sentinel_lock:
            sentinel = self._sync_sentinel
            if sentinel is None:
                sentinel = self._sync_sentinel = redis.sentinel.Sentinel(
                    list(self._seeds.sentinels),
                    sentinel_kwargs={
                        **_sentinel_options(self._seeds),
                        "retry": Retry(NoBackoff(), 0),
                    },
                )
        try:
            host, port = sentinel.discover_master(self._seeds.master_name)
        except (redis.RedisError, OSError) as exc:
            raise TransportError(f"no sentinel names a master: {exc}") from exc
        return self._found(str(host), int(port))

    def _found(self, host: str, port: int) -> Endpoint:
        """The master at ``host:port``; a change of master is logged (a failover)."""
        endpoint = self._seeds.endpoint(host, port)
        where, before = str(endpoint), self._last_master
        if where != before:
            self._last_master = where
            if before is None:
                logger.info("the sentinels name %s the master %r", where, self._seeds.master_name)
            else:
                logger.warning(
                    "the sentinels now name %s the master %r (was %s): a failover",
                    where,
                    self._seeds.master_name,
                    before,
                )
        return endpoint

    async def _open_connection(self, **options: Any) -> RespConnection:
        """Ask the sentinels where the master is, connect, and check it is a master."""
        attempt = 0
        while True:
            endpoint = await self._master()
            try:
                return await open_connection(endpoint, **options)
            except NotMasterError:
                attempt += 1
                if attempt > _REPLICA_RETRIES or self._stopped():
                    raise
                logger.info("%s: named by the sentinels but not a master; asking again", endpoint)
            await asyncio.sleep(_REPLICA_RETRY_DELAY)

    # -- lifecycle --------------------------------------------------------------------
    async def close(self) -> None:
        """Close every connection, those to the sentinels too."""
        await super().close()
        sentinel, self._async_sentinel = self._async_sentinel, None
        if sentinel is not None and self._sentinel_loop is asyncio.get_running_loop():
            for client in sentinel.sentinels:
                await client.aclose()
        self._sentinel_loop = None

    def close_blocking(self) -> None:
        """Close the blocking connections and those to the sentinels."""
        super().close_blocking()
        with self._sentinel_lock:
            sentinel, self._sync_sentinel = self._sync_sentinel, None
        if sentinel is not None:
            for client in sentinel.sentinels:
                client.close()
