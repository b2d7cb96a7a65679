"""A service and its callers on the master Sentinel names: ``redis+sentinel://...``.

The URL's form and options; a service, its callers, broadcasts, durable messages, the
cache and the admin tools on the master of a shared master, replica and three
sentinels; a replica refused as the master. What happens when that master dies is in
``test_sentinel_failover.py``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis.sentinel

from _apps import Apps
from _helpers import ServiceProcess, unique_name, wait_for
from daebus import AsyncDaebusCaller, Daebus, SetupError, broadcast, cache, request
from daebus._admin import open_admin
from daebus.transport import SentinelTransport, is_sentinel_url, transport_from_url
from daebus.transport._endpoint import Endpoint, NotMasterError
from daebus.transport._resp import open_connection, pack
from daebus.transport._resp_blocking import BlockingConnection
from daebus.transport._sentinel_url import SentinelSeeds
from daebus.transport._url import redact_url

pytestmark = pytest.mark.timeout(60)


# -- the URL ---------------------------------------------------------------------------


def test_the_url_names_the_sentinels_the_master_and_the_data_nodes_credentials() -> None:
    seeds = SentinelSeeds.from_url(
        "redis+sentinel://app:s%40cret@10.0.0.1:26380,10.0.0.2,[::1]:26381/orders/3"
        "?sentinel_password=watch"
    )
    assert seeds.sentinels == (("10.0.0.1", 26380), ("10.0.0.2", 26379), ("::1", 26381))
    assert seeds.master_name == "orders"
    assert (seeds.db, seeds.username, seeds.password) == (3, "app", "s@cret")
    assert (seeds.sentinel_username, seeds.sentinel_password) == (None, "watch")
    endpoint = seeds.endpoint("10.0.0.9", 6380)
    assert (endpoint.host, endpoint.port, endpoint.db, endpoint.password) == (
        "10.0.0.9",
        6380,
        3,
        "s@cret",
    )
    assert endpoint.must_be_master


def test_valkey_sentinel_is_the_same_scheme() -> None:
    assert is_sentinel_url("valkey+sentinel://h:1/m")
    assert isinstance(transport_from_url("valkey+sentinel://h:1/m"), SentinelTransport)
    assert isinstance(transport_from_url("redis+sentinel://h:1/m"), SentinelTransport)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel://h:1", "names no master"),
        ("redis+sentinel://h:1/", "names no master"),
        ("redis+sentinel://h:1/m/x", "is a number"),
        ("redis+sentinel://h:1/m/0/extra", "MASTER_NAME"),
        ("redis+sentinel://h:1/m?socket_timeout=3", "'socket_timeout' is not supported"),
    ],
)
def test_a_bad_url_is_refused_with_the_reason(url: str, why: str) -> None:
    with pytest.raises(SetupError, match=why):
        transport_from_url(url)


def test_its_passwords_are_not_shown() -> None:
    shown = redact_url("redis+sentinel://:hush@h1:1,h2:2/m?sentinel_password=quiet")
    assert "hush" not in shown
    assert "quiet" not in shown


# -- a service on the master -----------------------------------------------------------


@pytest.fixture
def on_sentinel(sentinel_url: str) -> Iterator[Apps]:
    """Apps started on the shared Sentinel set-up's master, stopped at teardown."""
    with Apps(sentinel_url) as apps:
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


def test_a_caller_gets_its_answers(on_sentinel: Apps) -> None:
    caller = on_sentinel.caller(on_sentinel.start(adder()))
    assert [caller.send_request("add", {"a": n, "b": 1}) for n in range(5)] == [1, 2, 3, 4, 5]


async def test_an_async_caller_gets_its_answers(on_sentinel: Apps) -> None:
    service = on_sentinel.start(adder())
    async with AsyncDaebusCaller(service, redis_url=on_sentinel.url) as caller:
        assert await caller.send_request("add", {"a": 20, "b": 22}) == 42


def test_broadcasts_reach_their_listeners(on_sentinel: Apps) -> None:
    app = Daebus("listener")
    channel = unique_name("news")
    pattern = unique_name("sensors") + ":*"
    seen: list[Any] = []
    lock = threading.Lock()

    @app.listen(channel)
    def on_news(data: Any) -> None:
        with lock:
            seen.append(data)

    @app.listen(pattern)  # one node: patterns work as on redis://
    def on_reading(data: Any) -> None:
        with lock:
            seen.append(data)

    caller = on_sentinel.caller(on_sentinel.start(app))
    assert send_from_a_script(on_sentinel.url, channel, {"from": "script"}) == 1
    assert caller.send_message(channel, {"from": "caller"}) == 1
    assert caller.send_message(pattern.replace("*", "kitchen"), {"from": "sensor"}) == 1
    wait_for(lambda: len(seen) == 3, message=lambda: f"seen {seen}")
    assert sorted(item["from"] for item in seen) == ["caller", "script", "sensor"]


def test_durable_messages_wait_for_their_listener(on_sentinel: Apps) -> None:
    channel = unique_name("orders")
    service = unique_name("svc")
    seen: list[Any] = []

    def durable_app() -> Daebus:
        app = Daebus("durable")

        @app.listen(channel, durable=True)
        def on_order(data: Any) -> None:
            seen.append(data)

        return app

    first = durable_app()
    on_sentinel.start(first, service)  # makes the group
    first.stop()
    for n in range(3):
        send_from_a_script(on_sentinel.url, channel, {"n": n}, durable=True)
    on_sentinel.start(durable_app(), service)
    wait_for(lambda: len(seen) == 3, message=lambda: f"seen {seen}")
    assert seen == [{"n": n} for n in range(3)]


def test_the_cache_is_the_masters(on_sentinel: Apps) -> None:
    app = Daebus("cached")
    key = unique_name("stock")

    @app.action("put")
    def put() -> Any:
        app.cache.set(key, "tea")
        return app.cache.get(key)

    caller = on_sentinel.caller(on_sentinel.start(app))
    assert caller.send_request("put", {}) == "tea"
    os.environ["DAEBUS_REDIS_URL"] = on_sentinel.url
    try:
        assert cache.get(key) == "tea"
    finally:
        del os.environ["DAEBUS_REDIS_URL"]


def test_the_admin_tools_read_the_master(on_sentinel: Apps) -> None:
    channel = unique_name("audit")
    send_from_a_script(on_sentinel.url, channel, {"n": 1}, durable=True)
    admin = open_admin(on_sentinel.url)
    try:
        admin.ping()
        assert admin.server_stats()["connected_clients"] >= 1
        assert any(channel in name for name in admin.stream_names("daebus:"))
    finally:
        admin.close()


# -- a replica is never taken for the master -------------------------------------------


@pytest.fixture
def replica(sentinel_url: str) -> Endpoint:
    """A replica of the shared set-up, as the transport's lookup would give it."""
    seeds = SentinelSeeds.from_url(sentinel_url)
    sentinel = redis.sentinel.Sentinel(list(seeds.sentinels))
    try:
        replicas = sentinel.discover_slaves(seeds.master_name)
    finally:
        for client in sentinel.sentinels:
            client.close()
    assert replicas
    host, port = replicas[0]
    return seeds.endpoint(host, port)


async def test_a_connection_to_a_replica_is_refused(replica: Endpoint) -> None:
    with pytest.raises(NotMasterError, match="is a slave, not the master"):
        await open_connection(replica)


def test_a_blocking_connection_to_a_replica_is_refused(replica: Endpoint) -> None:
    connection = BlockingConnection(replica, 2.0)
    try:
        with pytest.raises(NotMasterError, match="is a slave, not the master"):
            connection.command(pack("PING"))
    finally:
        connection.close()


def test_daebus_listen_shows_the_masters_traffic(on_sentinel: Apps) -> None:
    service = on_sentinel.start(adder())
    listener = ServiceProcess(
        module="daebus.cli",
        args=["listen", service, "--redis-url", on_sentinel.url],
        redis_url=on_sentinel.url,
        name="daebus-listen",
    )
    with listener:
        wait_for(lambda: "listening on" in listener.stderr(), timeout=10)
        on_sentinel.caller(service).send_request("add", {"a": 1, "b": 2})
        wait_for(lambda: service in listener.stdout(), message=lambda: listener.output())
