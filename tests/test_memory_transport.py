"""The in-memory transport: its broker, its cache, and a real app served on ``memory://``.

What it shares with the Redis transport is in test_transport_contract.py; here is what only
``memory://`` has (brokers by name, the fakeredis cache, the glob matcher's corner cases)
and a whole service talking to callers in one process with no server at all.
"""

from __future__ import annotations

import asyncio
import random
import sys
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from _helpers import unique_name, wait_for
from daebus import (
    AsyncDaebusCaller,
    Daebus,
    DaebusCaller,
    RemoteError,
    ServiceUnavailableError,
    broadcast,
    cache,
    request,
    response,
)
from daebus._standalone import standalone_cache
from daebus.transport import Delivery, transport_from_url
from daebus.transport._glob import compile_glob, glob_match
from daebus.transport.memory import MemoryTransport, Published, broker_for, forget


@pytest.fixture
def url() -> Iterator[str]:
    memory_url = f"memory://{unique_name('mem')}"
    yield memory_url
    forget(memory_url)


# -- brokers ------------------------------------------------------------------------------


def test_memory_urls_build_memory_transports(url: str) -> None:
    transport = transport_from_url(url)
    assert isinstance(transport, MemoryTransport)
    assert transport.url == url
    assert transport.broker is broker_for(url)
    assert isinstance(transport_from_url("memory://"), MemoryTransport)
    assert isinstance(transport_from_url("MEMORY://x"), MemoryTransport)
    with pytest.raises(ValueError, match="memory://"):
        transport_from_url("nats://localhost")


def test_one_url_is_one_broker_and_names_are_separate(url: str) -> None:
    assert broker_for(url) is broker_for(url)
    assert broker_for(url) is not broker_for(url + "-other")
    assert broker_for("memory://") is not broker_for(url)
    forget(url + "-other")


async def test_transports_talk_only_within_their_broker(url: str) -> None:
    here, same, elsewhere = (transport_from_url(u) for u in (url, url, url + "-2"))
    got: list[Delivery] = []
    await here.subscribe("news", got.append)
    try:
        assert await same.publish("news", b"1") == 1
        assert await elsewhere.publish("news", b"2") == 0
        await here.drained()  # type: ignore[attr-defined]
        assert [d.data for d in got] == [b"1"]
    finally:
        await here.close()
        forget(url + "-2")


async def test_forget_gives_a_fresh_broker(url: str) -> None:
    old = transport_from_url(url)
    await old.subscribe("c", lambda d: None)
    try:
        forget(url)
        assert await transport_from_url(url).publish("c", b"x") == 0
    finally:
        await old.close()


async def test_publishing_accepts_what_redis_py_accepts(url: str) -> None:
    transport = transport_from_url(url)
    got: list[Delivery] = []
    await transport.subscribe("c", got.append)
    try:
        for value in ("text", bytearray(b"ba"), memoryview(b"mv"), 12, 1.5):
            assert await transport.publish("c", value) == 1  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await transport.publish("c", {"not": "bytes"})  # type: ignore[arg-type]
        await transport.drained()  # type: ignore[attr-defined]
        assert [d.data for d in got] == [b"text", b"ba", b"mv", b"12", b"1.5"]
    finally:
        await transport.close()


async def test_monitor_sees_every_publish_with_its_publisher(url: str) -> None:
    broker = broker_for(url)
    seen: list[Published] = []
    stop = broker.monitor(seen.append)
    publisher = MemoryTransport(url)
    await publisher.subscribe("c", lambda d: None)
    try:
        publisher.publish_blocking("c", b"1")
        broker.publish("d", b"2")
        stop()
        broker.publish("e", b"3")
        assert seen == [Published("c", b"1", publisher, 1), Published("d", b"2", None, 0)]
        assert broker.numsub("c") == 1
        assert broker.numpat() == 0
    finally:
        await publisher.close()


async def test_a_subscriber_whose_loop_is_gone_is_not_counted_nor_stuck(url: str) -> None:
    publisher = MemoryTransport(url)
    abandoned = MemoryTransport(url)

    async def subscribe() -> None:
        await abandoned.subscribe("c", lambda d: None)

    # Its loop ends without closing the transport, as when a thread dies.
    await asyncio.to_thread(asyncio.run, subscribe())
    assert await publisher.publish("c", b"x") == 0
    assert broker_for(url).numsub("c") == 0

    # Used again on a live loop, it starts afresh there.
    got: list[Delivery] = []
    await abandoned.subscribe("c", got.append)
    try:
        assert await publisher.publish("c", b"y") == 1
        await abandoned.drained()
        assert got == [Delivery("c", b"y")]
    finally:
        await abandoned.close()


async def test_a_handler_may_close_its_own_transport(url: str) -> None:
    transport = MemoryTransport(url)
    got: list[bytes] = []

    async def close_on_stop(delivery: Delivery) -> None:
        got.append(delivery.data)
        if delivery.data == b"stop":
            await transport.close()

    await transport.subscribe("c", close_on_stop)
    for data in (b"1", b"stop", b"after"):
        transport.publish_blocking("c", data)
    await asyncio.wait_for(transport.drained(), 5)
    assert got == [b"1", b"stop"]
    assert broker_for(url).numsub("c") == 0

    await transport.connect()  # and it opens again, with one reader
    await transport.subscribe("c", close_on_stop)
    assert transport.publish_blocking("c", b"again") == 1
    await asyncio.wait_for(transport.drained(), 5)
    assert got == [b"1", b"stop", b"again"]
    await transport.close()


async def test_drained_waits_for_the_handlers_awaitables(url: str) -> None:
    transport = MemoryTransport(url)
    finished: list[bytes] = []

    async def slow(delivery: Delivery) -> None:
        await asyncio.sleep(0.01)
        finished.append(delivery.data)

    await transport.subscribe("c", slow)
    try:
        for i in range(5):
            transport.publish_blocking("c", str(i).encode())
        assert not transport.idle
        await transport.drained()
        assert transport.idle
        assert finished == [b"0", b"1", b"2", b"3", b"4"]
    finally:
        await transport.close()


# -- streams: what only memory:// does (the shared commands are in the contract suite) ----


def test_streams_are_trimmed_exactly_by_length_and_by_age(url: str) -> None:
    # Redis's ``~`` may keep up to a node (100 entries) more; memory:// keeps none more.
    streams = broker_for(url).streams
    ids = [streams.add("s", {"data": str(n).encode()}, 3) for n in range(5)]
    assert [entry.id for entry in streams.entries("s")] == ids[-3:]

    old = [streams.add("t", {"data": b"old"}, 1000) for _ in range(5)]
    last_ms = int(old[-1].split("-")[0])
    wait_for(lambda: int(streams.add("probe", {}, 1).split("-")[0]) > last_ms + 1)
    young = streams.add("t", {"data": b"young"}, 1000, max_age_ms=1)
    assert [entry.id for entry in streams.entries("t")] == [young]


# -- Redis's glob rules beyond the contract's table (each checked against Valkey's KEYS) --


@pytest.mark.parametrize(
    ("pattern", "channel", "expected"),
    [
        ("", "", True),
        ("*", "", False),
        ("a*", "a", True),
        ("*a*b*c*d*e*f*g*h*", "xaxbxcxdxexfxgxhx", True),
        ("*a*a*a*a*a*a*a*a*b", "a" * 200, False),  # no exponential backtracking
        ("[a-c-e]", "-", True),  # after a range, "-" is a member
        ("[a-c-e]", "e", True),
        ("[a-c-e]", "d", False),
        ("[\\a-c]", "b", False),  # an escaped bound starts no range
        ("[\\a-c]", "-", True),
        ("[^]", "x", True),  # an unclosed, empty, negated class: any byte
        ("\\", "\\", True),
        ("[é]", "é", False),  # two bytes in the class, one of them in the channel
        ("[é]?", "é", True),
    ],
)
def test_glob_corner_cases(pattern: str, channel: str, expected: bool) -> None:
    assert glob_match(pattern, channel) is expected


def test_a_pattern_of_classes_compiles_small() -> None:
    # Patterns come from other processes too (the registry's listeners: daebus
    # channels): a kilobyte of negated classes took 4.7 MB as sets of bytes.
    tracemalloc.start()
    try:
        matcher = compile_glob("[^a]" * 256 + "-unique-to-this-test")
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size < 200_000
    assert matcher(b"b" * 256 + b"-unique-to-this-test")
    assert not matcher(b"a" * 256 + b"-unique-to-this-test")


def test_glob_agrees_with_the_server_on_random_patterns(redis_client: redis.Redis) -> None:
    # The server's matcher is reachable through KEYS; a literal prefix keeps other
    # tests' keys out (and keeps every name non-empty, the one case KEYS treats apart).
    rng = random.Random(20240601)
    prefix = unique_name("glob") + "|"
    alphabet = ["a", "b", "*", "?", "[", "]", "^", "-", "\\", "é", "!", "z"]
    names = {"".join(rng.choices(alphabet, k=rng.randint(1, 5))) for _ in range(150)}
    redis_client.mset({prefix + name: 1 for name in names})
    try:
        for _ in range(300):
            pattern = "".join(rng.choices(alphabet, k=rng.randint(1, 6)))
            server = {key.decode()[len(prefix) :] for key in redis_client.keys(prefix + pattern)}
            mine = {name for name in names if glob_match(prefix + pattern, prefix + name)}
            assert mine == server, f"pattern {pattern!r}"
    finally:
        redis_client.delete(*(prefix + name for name in names))


# -- the cache ----------------------------------------------------------------------------


async def test_the_cache_is_shared_by_the_transports_of_a_url(url: str) -> None:
    first, second = MemoryTransport(url), MemoryTransport(url)
    try:
        first.blocking_client().hset("user:1", mapping={"name": "Ann", "age": 7})
        assert second.blocking_client().hgetall("user:1") == {"name": "Ann", "age": "7"}
        assert MemoryTransport(url + "-x").blocking_client().exists("user:1") == 0
    finally:
        await first.close()
        await second.close()
        forget(url + "-x")


def test_without_fakeredis_the_cache_says_what_to_install(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "fakeredis", None)
    with pytest.raises(ImportError, match=r"pip install 'daebus\[testing\]'"):
        MemoryTransport(url).blocking_client()


async def test_the_caches_publish_goes_through_the_broker(url: str) -> None:
    transport = MemoryTransport(url)
    got: list[Delivery] = []
    await transport.subscribe("news:*", got.append, pattern=True)
    try:
        assert transport.blocking_client().publish("news:today", "hello") == 1
        await transport.drained()
        assert got == [Delivery("news:today", b"hello", "news:*")]
    finally:
        await transport.close()


# -- a real app, callers and listeners in one process --------------------------------------


def shop_app() -> Daebus:
    app = Daebus("shop")
    app.orders: list[Any] = []  # type: ignore[attr-defined]

    @app.action("order")
    def order() -> Any:
        item = request.payload.get("item")
        if not item:
            raise ValueError("item is required")
        cache.incr(f"orders:{item}")
        broadcast.send("shop:ordered", {"item": item})
        return {"ok": True, "count": int(cache.get(f"orders:{item}"))}

    @app.action("track")
    async def track() -> Any:
        for step in ("packed", "shipped"):
            await response.send({"step": step}, final=False)
        return {"step": "delivered"}

    @app.action("count")
    def count() -> Any:
        yield from range(request.payload["to"])

    @app.listen("shop:restock:*")
    def restock(data: Any, channel: str) -> None:
        app.orders.append((channel, data))  # type: ignore[attr-defined]
        broadcast.send("shop:restocked", {"from": channel})

    return app


@pytest.fixture
def shop(url: str) -> Iterator[Daebus]:
    app = shop_app()
    app.start("shop", redis_url=url)
    try:
        yield app
    finally:
        app.stop()


def test_a_service_and_its_caller_talk_in_process(shop: Daebus, url: str) -> None:
    assert shop.redis_url == url
    watcher = DaebusCaller("shop", redis_url=url)  # for its cache: the same fake server
    events: list[Any] = []
    with DaebusCaller("shop", redis_url=url, timeout=5) as caller:
        stop = broker_for(url).monitor(
            lambda p: events.append(p.channel) if p.channel.startswith("shop:") else None
        )
        try:
            assert caller.send_request("order", {"item": "tea"}) == {"ok": True, "count": 1}
            assert caller.send_request("order", {"item": "tea"}) == {"ok": True, "count": 2}
            with pytest.raises(RemoteError, match="item is required"):
                caller.send_request("order", {})
            with pytest.raises(RemoteError, match="Unknown action 'nope'"):
                caller.send_request("nope")

            parts: list[Any] = []
            final = caller.send_request("track", on_progress=parts.append)
            assert (parts, final) == (
                [{"step": "packed"}, {"step": "shipped"}],
                {"step": "delivered"},
            )
            assert list(caller.stream("count", {"to": 3})) == [0, 1, 2, None]

            assert watcher.redis.get("orders:tea") == "2"
            assert events == ["shop:ordered", "shop:ordered"]
        finally:
            stop()
            watcher.close()


def test_listeners_get_broadcasts_and_broadcast_back(shop: Daebus, url: str) -> None:
    async def scenario() -> list[Delivery]:
        transport = MemoryTransport(url)
        got: list[Delivery] = []
        arrived = asyncio.Event()

        def on_restocked(delivery: Delivery) -> None:
            got.append(delivery)
            arrived.set()

        await transport.subscribe("shop:restocked", on_restocked)
        try:
            assert await transport.publish("shop:restock:tea", b'{"n": 5}') == 1
            await asyncio.wait_for(arrived.wait(), 5)
            return got
        finally:
            await transport.close()

    (delivery,) = asyncio.run(scenario())
    assert delivery.data == b'{"from":"shop:restock:tea"}'
    assert shop.orders == [("shop:restock:tea", {"n": 5})]  # type: ignore[attr-defined]


async def test_an_async_caller_on_the_tests_own_loop(shop: Daebus, url: str) -> None:
    async with AsyncDaebusCaller("shop", redis_url=url) as caller:
        assert await caller.send_request("order", {"item": "cake"}) == {"ok": True, "count": 1}
        assert [part async for part in caller.stream("track")][-1] == {"step": "delivered"}


def test_a_stopped_service_is_unavailable_at_once(url: str) -> None:
    app = shop_app()
    app.start("shop", redis_url=url)
    app.stop()
    with (
        DaebusCaller("shop", redis_url=url) as caller,
        pytest.raises(ServiceUnavailableError),
    ):
        caller.send_request("order", {"item": "tea"})


def test_two_services_on_one_broker_call_each_other(url: str) -> None:
    prices = Daebus("prices")

    @prices.action("price")
    def price() -> Any:
        return {"tea": 3}[request.payload["item"]]

    shop = Daebus("shop2")

    @shop.action("quote")
    def quote() -> Any:
        with DaebusCaller("prices") as other:  # no URL: the running app's broker
            return other.send_request("price", {"item": "tea"}) * request.payload["n"]

    prices.start("prices", redis_url=url)
    shop.start("shop2", redis_url=url)
    try:
        with DaebusCaller("shop2", redis_url=url) as caller:
            assert caller.send_request("quote", {"n": 4}) == 12
    finally:
        shop.stop()
        prices.stop()


def test_default_memory_url_serves_a_single_process_app(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAEBUS_REDIS_URL", "memory://")
    app = Daebus("solo")

    @app.action("ping")
    def ping() -> str:
        return "pong"

    app.start("solo")
    try:
        assert app.redis_url == "memory://"
        with DaebusCaller("solo") as caller:
            assert caller.send_request("ping") == "pong"
    finally:
        app.stop()


# -- cache and broadcast outside any app (daebus._standalone) ------------------------


def test_the_cache_outside_any_app_is_the_store_the_app_sees(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAEBUS_REDIS_URL", url)
    # No app runs: `cache` is the standalone client on $DAEBUS_REDIS_URL's broker.
    cache.set("orders:tea", 10)
    outside = standalone_cache()
    assert outside.get("orders:tea") == "10"
    app = shop_app()
    app.start("shop")  # no URL: $DAEBUS_REDIS_URL as well
    try:
        assert app.redis_url == url
        assert outside is not app.cache
        with DaebusCaller("shop") as caller:
            assert caller.send_request("order", {"item": "tea"}) == {"ok": True, "count": 11}
        assert outside.get("orders:tea") == "11"
        # Its PUBLISH goes through the broker: the app's listener hears it.
        assert outside.publish("shop:restock:tea", '{"n": 5}') == 1
        wait_for(lambda: app.orders, timeout=5)  # type: ignore[attr-defined]
        assert app.orders == [("shop:restock:tea", {"n": 5})]  # type: ignore[attr-defined]
    finally:
        app.stop()
    assert cache.get("orders:tea") == "11"  # no app runs again: the standalone client


def test_the_cache_outside_any_app_follows_a_forgotten_broker(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAEBUS_REDIS_URL", url)
    cache.set("orders:tea", 10)
    forget(url)  # as a test client does, so that the next test starts afresh
    assert cache.get("orders:tea") is None
    cache.set("orders:tea", 20)
    app = shop_app()
    app.start("shop")
    try:
        with DaebusCaller("shop") as caller:
            assert caller.send_request("order", {"item": "tea"}) == {"ok": True, "count": 21}
        assert standalone_cache().get("orders:tea") == "21"
        assert broadcast.send("shop:restock:tea", {"n": 1}) == 1  # the one app's broadcast
    finally:
        app.stop()
    # Broadcasts from outside any app reach the new broker's subscribers too.
    got: list[Published] = []
    stop = broker_for(url).monitor(got.append)
    try:
        assert broadcast.send("shop:news", {"n": 2}) == 0
    finally:
        stop()
    assert [p.channel for p in got] == ["shop:news"]
