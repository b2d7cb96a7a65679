"""A service and its callers on a Valkey cluster, end to end: ``redis_url="redis+cluster://..."``.

The requests, replies and broadcasts ride sharded pub/sub, durable messages the streams
on their shards. A glob listener, which sharded pub/sub cannot serve, stops the start;
the cache and the admin tools, which would talk to one node, are refused with the reason.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from _apps import Apps
from _cluster import ValkeyCluster
from _helpers import unique_name, wait_for
from daebus import AsyncDaebusCaller, Daebus, RemoteError, SetupError, broadcast, cache, request
from daebus._admin import open_admin
from daebus.dead_letters import DeadLetters
from daebus.protocol import stream_key

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def on_cluster(cluster_url: str) -> Iterator[Apps]:
    """Apps started on the shared cluster, stopped at teardown."""
    with Apps(cluster_url) as apps:
        yield apps


def send_from_a_script(url: str, channel: str, payload: Any, **options: Any) -> Any:
    """``broadcast.send`` from outside any app, as a script would, to ``url``."""
    os.environ["DAEBUS_REDIS_URL"] = url
    try:
        return broadcast.send(channel, payload, **options)
    finally:
        del os.environ["DAEBUS_REDIS_URL"]


def adder() -> Daebus:
    app = Daebus("adder")

    @app.action("add")
    def add() -> Any:
        return request.payload["a"] + request.payload["b"]

    return app


def test_a_caller_gets_its_answers(on_cluster: Apps) -> None:
    caller = on_cluster.caller(on_cluster.start(adder()))
    assert caller.send_request("add", {"a": 1, "b": 2}) == 3
    # From the second request on, the caller reads its replies its own way.
    assert [caller.send_request("add", {"a": n, "b": 1}) for n in range(5)] == [1, 2, 3, 4, 5]


async def test_an_async_caller_gets_its_answers(on_cluster: Apps) -> None:
    service = on_cluster.start(adder())
    async with AsyncDaebusCaller(service, redis_url=on_cluster.url) as caller:
        assert await caller.send_request("add", {"a": 20, "b": 22}) == 42


def test_broadcasts_reach_their_listeners(on_cluster: Apps) -> None:
    app = Daebus("listener")
    channel = unique_name("news")
    seen: list[Any] = []
    lock = threading.Lock()

    @app.listen(channel)
    def on_news(data: Any) -> None:
        with lock:
            seen.append(data)

    caller = on_cluster.caller(on_cluster.start(app))
    assert send_from_a_script(on_cluster.url, channel, {"from": "script"}) == 1
    assert caller.send_message(channel, {"from": "caller"}) == 1
    wait_for(lambda: len(seen) == 2, message=lambda: f"seen {seen}")
    assert sorted(item["from"] for item in seen) == ["caller", "script"]


def test_durable_messages_wait_on_their_shard_for_the_listener(
    on_cluster: Apps, valkey_cluster: ValkeyCluster
) -> None:
    channel = unique_name("orders")
    service = unique_name("svc")
    seen: list[tuple[Any, str | None]] = []

    def durable_app() -> Daebus:
        app = Daebus("durable")

        @app.listen(channel, durable=True)
        def on_order(data: Any) -> None:
            seen.append((data, request.message_id))

        return app

    first = durable_app()
    on_cluster.start(first, service)  # makes the group
    first.stop()
    ids = [send_from_a_script(on_cluster.url, channel, {"n": n}, durable=True) for n in range(3)]

    seed = valkey_cluster.nodes[0]
    client = redis.RedisCluster(host=seed.host, port=seed.port)
    try:
        kept = [entry_id.decode() for entry_id, _ in client.xrange(stream_key(channel))]
    finally:
        client.close()
    assert kept == ids

    on_cluster.start(durable_app(), service)
    wait_for(lambda: len(seen) == 3, message=lambda: f"seen {seen}")
    assert seen == [({"n": n}, entry_id) for n, entry_id in enumerate(ids)]


def test_a_glob_listener_stops_the_start_with_the_reason(on_cluster: Apps) -> None:
    app = Daebus("globs")
    pattern = unique_name("sensors") + ":*"

    @app.listen(pattern)
    def on_reading(data: Any) -> None:
        raise AssertionError("never delivered")

    with pytest.raises(SetupError, match="sharded pub/sub, which has no patterns") as refused:
        on_cluster.start(app)
    assert repr(pattern) in str(refused.value)
    assert not app.is_running()


def test_the_cache_is_refused_with_the_reason(on_cluster: Apps, cluster_url: str) -> None:
    app = Daebus("cached")
    failures: list[str] = []

    @app.action("get")
    def get() -> Any:
        try:
            return cache.get("anything")
        except SetupError as exc:
            failures.append(str(exc))
            raise

    caller = on_cluster.caller(on_cluster.start(app))
    with pytest.raises(RemoteError):
        caller.send_request("get")
    with pytest.raises(SetupError, match="no cache on a cluster"):
        app.cache  # noqa: B018
    with pytest.raises(SetupError, match="no cache on a cluster"):
        caller.redis  # noqa: B018
    os.environ["DAEBUS_REDIS_URL"] = cluster_url
    try:
        with pytest.raises(SetupError, match="no cache on a cluster"):
            cache.get("anything")  # outside any app, as a script
    finally:
        del os.environ["DAEBUS_REDIS_URL"]
    assert len(failures) == 1
    assert "no cache on a cluster" in failures[0]


def test_the_admin_tools_refuse_a_cluster(cluster_url: str) -> None:
    with pytest.raises(SetupError, match="do not read a cluster yet"):
        open_admin(cluster_url)
    with pytest.raises(SetupError, match="do not read a cluster yet"):
        DeadLetters(unique_name("orders"), "svc", redis_url=cluster_url).count()
