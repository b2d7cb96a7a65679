"""The cluster transport's own promises: its URLs, sharded pub/sub, and keys on their shards.

What every transport promises is in test_transport_contract.py, which runs on the cluster
too; here is what only a cluster has.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis

from _cluster import ValkeyCluster, client_for
from _helpers import unique_name, wait_until
from _servers import free_port
from daebus import SetupError, TransportError
from daebus.transport import Delivery, Transport, transport_from_url
from daebus.transport.cluster import ClusterSeeds, ClusterTransport

# -- URLs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "nodes"),
    [
        ("redis+cluster://10.0.0.1:7000", (("10.0.0.1", 7000),)),
        ("redis+cluster://a:7000,b:7001,c", (("a", 7000), ("b", 7001), ("c", 6379))),
        ("valkey+cluster://[::1]:7000,[fe80::1]/", (("::1", 7000), ("fe80::1", 6379))),
        ("REDIS+CLUSTER://h:1/0", (("h", 1),)),
    ],
)
def test_a_cluster_url_names_its_seed_nodes(url: str, nodes: tuple[tuple[str, int], ...]) -> None:
    assert ClusterSeeds.from_url(url).nodes == nodes
    assert isinstance(transport_from_url(url), ClusterTransport)


@pytest.mark.parametrize(
    ("url", "username", "password"),
    [
        ("redis+cluster://h:1", None, None),
        ("redis+cluster://:s%40cret@h:1,g:2", None, "s@cret"),
        ("redis+cluster://me:secret@h:1", "me", "secret"),
        ("redis+cluster://h:1?username=me&password=secret", "me", "secret"),
    ],
)
def test_a_cluster_url_carries_the_credentials_of_every_node(
    url: str, username: str | None, password: str | None
) -> None:
    seeds = ClusterSeeds.from_url(url)
    assert (seeds.username, seeds.password) == (username, password)
    endpoint = seeds.endpoint("other", 9)
    assert (endpoint.host, endpoint.port) == ("other", 9)
    assert (endpoint.username, endpoint.password) == (username, password)


def test_an_option_the_cluster_transport_would_ignore_is_refused_by_name() -> None:
    with pytest.raises(SetupError, match="option 'protocol' is not supported") as caught:
        transport_from_url("redis+cluster://h:1?password=hunter2&protocol=3")
    assert "password, username" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_a_cluster_has_only_database_0() -> None:
    with pytest.raises(SetupError, match="only database 0"):
        transport_from_url("redis+cluster://h:1/2")


@pytest.mark.parametrize("url", ["redis+cluster://", "redis+cluster://h:port"])
def test_a_cluster_url_without_a_usable_node_is_malformed(url: str) -> None:
    with pytest.raises(ValueError, match=r"no node|bad port"):
        transport_from_url(url)


def test_the_shown_url_masks_the_password() -> None:
    transport = transport_from_url("redis+cluster://me:hunter2@h:1,g:2")
    assert "hunter2" not in transport.shown_url
    assert "hunter2" not in repr(transport)
    assert transport.shown_url == "redis+cluster://me:***@h:1,g:2"


# -- on a real cluster --------------------------------------------------------------------


@pytest.fixture
async def cluster_transport(cluster_url: str) -> AsyncIterator[Transport]:
    transport = transport_from_url(cluster_url)
    await transport.connect()
    try:
        yield transport
    finally:
        await transport.close()


def channels_on_every_master(cluster: ValkeyCluster, prefix: str) -> dict[str, str]:
    """One name (of a channel, or a key) per master: "host:port" -> a name whose slot it owns."""
    client = redis.RedisCluster(host=cluster.nodes[0].host, port=cluster.nodes[0].port)
    try:
        found: dict[str, str] = {}
        number = 0
        while len(found) < len(client.get_primaries()):
            channel = f"{prefix}{number}"
            found.setdefault(client.get_node_from_key(channel).name, channel)
            number += 1
        return found
    finally:
        client.close()


async def test_each_channel_rides_sharded_pub_sub_on_its_own_shard(
    cluster_transport: Transport, valkey_cluster: ValkeyCluster
) -> None:
    channels = channels_on_every_master(valkey_cluster, unique_name("shard") + ":")
    received: asyncio.Queue[Delivery] = asyncio.Queue()
    for channel in channels.values():
        await cluster_transport.subscribe(channel, received.put_nowait)

    for owner, channel in channels.items():
        host, _, port = owner.rpartition(":")
        node = redis.Redis(host=host, port=int(port))
        try:
            # Subscribed with SSUBSCRIBE on the slot's master, not with SUBSCRIBE.
            assert node.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1] == 1
            assert node.pubsub_numsub(channel) == [(channel.encode(), 0)]
        finally:
            node.close()
        assert await cluster_transport.publish(channel, owner.encode()) == 1

    got = [await asyncio.wait_for(received.get(), 5) for _ in channels]
    assert {(d.channel, d.data) for d in got} == {(c, o.encode()) for o, c in channels.items()}


async def test_threads_publish_to_every_shard(
    cluster_transport: Transport, valkey_cluster: ValkeyCluster
) -> None:
    channels = list(channels_on_every_master(valkey_cluster, unique_name("thread") + ":").values())
    received: asyncio.Queue[Delivery] = asyncio.Queue()
    for channel in channels:
        await cluster_transport.subscribe(channel, received.put_nowait)

    one = await asyncio.to_thread(cluster_transport.publish_blocking, channels[0], b"one")
    many = await asyncio.to_thread(
        cluster_transport.publish_many_blocking, [(c, b"many") for c in channels]
    )
    assert (one, many) == (1, [1] * len(channels))
    got = [await asyncio.wait_for(received.get(), 5) for _ in range(1 + len(channels))]
    assert sorted(d.channel for d in got) == sorted([channels[0], *channels])


async def test_streams_live_on_their_own_shards(
    cluster_transport: Transport, valkey_cluster: ValkeyCluster
) -> None:
    streams = list(channels_on_every_master(valkey_cluster, unique_name("stream") + ":").values())
    for stream in streams:
        assert await cluster_transport.stream_create_group(stream, "g", "$")
    ids = await asyncio.to_thread(
        cluster_transport.stream_add_many_blocking,
        [(stream, {"data": stream.encode()}) for stream in streams],
        100,
    )
    for stream, entry_id in zip(streams, ids, strict=True):
        (entry,) = await cluster_transport.stream_read(stream, "g", "c", 10, 10)
        assert (entry.id, entry.fields) == (entry_id, {"data": stream.encode()})
        assert await cluster_transport.stream_ack(stream, "g", [entry.id], delete=True) == 1


def nobody_listens() -> str:
    """A cluster URL of two loopback ports where nothing listens."""
    return f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}"


async def test_an_unreachable_cluster_is_a_transport_error() -> None:
    transport = transport_from_url(nobody_listens())
    with pytest.raises(TransportError, match="cannot reach the cluster"):
        await transport.connect()
    with pytest.raises(TransportError):
        await asyncio.to_thread(transport.publish_blocking, "somewhere", b"x")
    await transport.close()


async def test_registry_entries_and_their_index_may_be_on_two_shards(
    cluster_transport: Transport, cluster_url: str, valkey_cluster: ValkeyCluster
) -> None:
    # An index and an entry whose slots are on two different masters.
    names = channels_on_every_master(valkey_cluster, unique_name("reg") + ":")
    index, key = list(names.values())[:2]
    client = client_for(cluster_url)
    try:
        await cluster_transport.put_entry(index, key, b'{"a": 1}', 60_000)
        assert client.get(key) == b'{"a": 1}'
        assert 50_000 < client.pttl(key) <= 60_000
        score = client.zscore(index, key)
        seconds, micros = client.time(target_nodes=client.get_node_from_key(index))
        assert score is not None
        assert 50_000 < score - (seconds * 1000 + micros // 1000) <= 60_000

        await cluster_transport.put_entry(index, key + ":short", b"x", 1)
        await asyncio.sleep(0.01)  # past its expiry, on the index's node's clock
        await cluster_transport.put_entry(index, key, b'{"a": 2}', 60_000)
        assert client.zrange(index, 0, -1) == [key.encode()]  # the expired one pruned

        await cluster_transport.drop_entry(index, key)
        assert (client.get(key), client.zrange(index, 0, -1)) == (None, [])
    finally:
        client.close()


async def test_a_lost_subscriber_connection_subscribes_again(
    cluster_transport: Transport, valkey_cluster: ValkeyCluster
) -> None:
    owner, channel = next(
        iter(channels_on_every_master(valkey_cluster, unique_name("lost") + ":").items())
    )
    lost: list[TransportError] = []
    cluster_transport.add_disconnect_handler(lost.append)
    received: asyncio.Queue[Delivery] = asyncio.Queue()
    await cluster_transport.subscribe(channel, received.put_nowait)

    host, _, port = owner.rpartition(":")
    node = redis.Redis(host=host, port=int(port))
    try:
        # The tests run one at a time: the only pub/sub clients of the node are this test's.
        assert node.client_kill_filter(_type="pubsub") >= 1
    finally:
        node.close()
    await wait_until(lambda: lost, message="the loss was never told")
    assert owner in str(lost[0])

    await asyncio.wait_for(cluster_transport.until_receiving(), 5)
    assert cluster_transport.receiving
    assert await cluster_transport.publish(channel, b"back") == 1
    assert (await asyncio.wait_for(received.get(), 5)).data == b"back"
