"""Durable sends acknowledged by replicas (``replicas=n``): ``WAIT`` after the ``XADD``.

On one server with a replica, and on a cluster, where a message so sent survives its
master's crash.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from _cluster import ValkeyCluster
from _helpers import unique_name
from _replicated import ReplicatedPair
from daebus import ReplicationError, broadcast
from daebus.protocol import stream_key
from daebus.transport import transport_from_url

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def replicated(server_binary: Path) -> Iterator[ReplicatedPair]:
    """A master and its replica, linked, for this test alone."""
    with ReplicatedPair(server_binary) as pair:
        yield pair


def send_from_a_script(url: str, *args: Any, many: bool = False, **options: Any) -> Any:
    """``broadcast.send`` (or ``send_many``) outside any app, as a script would, to ``url``."""
    os.environ["DAEBUS_REDIS_URL"] = url
    try:
        if many:
            return broadcast.send_many(*args, **options)
        return broadcast.send(*args, **options)
    finally:
        del os.environ["DAEBUS_REDIS_URL"]


def entry_ids(host: str, port: int, channel: str) -> list[str]:
    """The ids in ``channel``'s stream on one server (a replica answers reads too)."""
    with redis.Redis(host=host, port=port) as client:
        return [entry_id.decode() for entry_id, _ in client.xrange(stream_key(channel))]


# -- options ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"replicas": 1}, "pass durable=True"),
        ({"durable": True, "replicas": -1}, "replicas must be"),
        ({"durable": True, "replicas": 1.5}, "replicas must be"),
        ({"durable": True, "replicas": 1, "replica_timeout": 0}, "replica timeout"),
        ({"durable": True, "replicas": 1, "replica_timeout": 61}, "replica timeout"),
    ],
)
def test_a_replica_option_wait_cannot_take_is_refused(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        send_from_a_script(f"memory://{unique_name('opts')}", "somewhere", 1, **options)


def test_memory_has_no_replicas_to_acknowledge() -> None:
    url = f"memory://{unique_name('replicas')}"
    with pytest.raises(ReplicationError, match="0 of the 1 replica") as caught:
        send_from_a_script(url, "orders", 1, durable=True, replicas=1)
    assert (caught.value.acknowledged, caught.value.wanted) == (0, 1)


# -- one server and its replica ----------------------------------------------------------


def test_a_script_send_returns_once_the_replica_has_it(replicated: ReplicatedPair) -> None:
    channel = unique_name("orders")
    url = replicated.master.url
    entry_id = send_from_a_script(url, channel, {"n": 1}, durable=True, replicas=1)
    many = send_from_a_script(
        url, [(channel, {"n": 2}), (channel, {"n": 3})], many=True, durable=True, replicas=1
    )
    replica = replicated.replica
    # Acknowledged: the replica has them already, nothing to wait for.
    assert entry_ids(replica.host, replica.port, channel) == [entry_id, *many]


async def test_a_transport_send_returns_once_the_replica_has_it(
    replicated: ReplicatedPair,
) -> None:
    channel = unique_name("orders")
    async with transport_from_url(replicated.master.url) as transport:
        ids = [
            await transport.stream_add(stream_key(channel), {"data": b"1"}, 100, replicas=1),
            await transport.stream_add(
                stream_key(channel), {"data": b"2"}, 100, max_age_ms=60_000, replicas=1
            ),
        ]
    replica = replicated.replica
    assert entry_ids(replica.host, replica.port, channel) == ids


async def test_a_send_no_replica_acknowledges_raises_after_its_timeout(
    replicated: ReplicatedPair,
) -> None:
    channel = unique_name("orders")
    url = replicated.master.url
    replicated.replica.pause()  # linked, but it acknowledges nothing
    with pytest.raises(ReplicationError, match="0 of the 1 replica"):
        send_from_a_script(url, channel, 1, durable=True, replicas=1, replica_timeout=0.2)
    async with transport_from_url(url) as transport:
        with pytest.raises(ReplicationError, match="within 200 ms"):
            await transport.stream_add(
                stream_key(channel), {"data": b"2"}, 100, replicas=1, replica_timeout_ms=200
            )
        # Without the option, nothing waits for the replica.
        await transport.stream_add(stream_key(channel), {"data": b"3"}, 100)
    # Not acknowledged, but written: the master has all three.
    assert len(entry_ids(replicated.master.host, replicated.master.port, channel)) == 3


# -- a cluster ----------------------------------------------------------------------------


async def test_on_a_cluster_an_acknowledged_message_survives_its_masters_crash(
    private_cluster: ValkeyCluster,
) -> None:
    channel = unique_name("orders")
    url = private_cluster.url
    from_script = await asyncio.to_thread(
        send_from_a_script, url, channel, {"n": 1}, durable=True, replicas=1
    )
    async with transport_from_url(url) as transport:
        from_loop = await transport.stream_add(stream_key(channel), {"data": b"2"}, 100, replicas=1)
    _master, replica = private_cluster.kill_master_of(stream_key(channel))
    await asyncio.to_thread(private_cluster.wait_promoted, replica)
    assert entry_ids(replica.host, replica.port, channel) == [from_script, from_loop]


async def test_on_a_cluster_a_send_its_replica_does_not_acknowledge_raises(
    private_cluster: ValkeyCluster,
) -> None:
    channel = unique_name("orders")
    url = private_cluster.url
    replica = private_cluster.replica_of(private_cluster.master_of(stream_key(channel)))
    replica.pause()
    try:
        with pytest.raises(ReplicationError, match="0 of the 1 replica"):
            await asyncio.to_thread(
                send_from_a_script, url, channel, 1, durable=True, replicas=1, replica_timeout=0.2
            )
        async with transport_from_url(url) as transport:
            with pytest.raises(ReplicationError, match="0 of the 1 replica"):
                await transport.stream_add(
                    stream_key(channel), {"data": b"2"}, 100, replicas=1, replica_timeout_ms=200
                )
    finally:
        replica.resume()
