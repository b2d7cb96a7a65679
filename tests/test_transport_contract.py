"""One contract, every transport: the same tests run on ``memory://``, on a real server and
on a real cluster.

A test that passes on one transport and fails on the other is a semantic difference between
them, which is a bug: code tested on ``memory://`` must behave the same on Redis. The one
difference allowed is the cluster's: sharded pub/sub has no patterns, so there a pattern
subscription must be refused, clearly (see `subscribe_pattern`).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from _cluster import client_for
from _helpers import QUIET, unique_name, wait_until
from daebus import SetupError, TransportError
from daebus._admin import open_admin
from daebus.transport import (
    Delivery,
    Subscription,
    Transport,
    is_sentinel_url,
    transport_from_url,
)
from daebus.transport._streams import parse_id
from daebus.transport.memory import broker_for, forget
from daebus.transport.redis import sync_client

T = TypeVar("T")


@pytest.fixture(params=["memory", "redis", "cluster", "sentinel"])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of each transport: a private in-memory broker, the test server, the cluster,
    the master of a Sentinel set-up."""
    if request.param == "memory":
        memory_url = f"memory://{unique_name('contract')}"
        yield memory_url
        forget(memory_url)
    elif request.param == "cluster":
        yield request.getfixturevalue("cluster_url")
    elif request.param == "sentinel":
        yield request.getfixturevalue("sentinel_url")
    else:
        yield request.getfixturevalue("redis_url")


def is_cluster(url: str) -> bool:
    return url.startswith("redis+cluster://")


@pytest.fixture
def has_patterns(url: str) -> bool:
    """Whether the transport has pattern subscriptions (sharded pub/sub has none)."""
    return not is_cluster(url)


async def subscribe_pattern(
    transport: Transport, pattern: str, handler: Recorder, has_patterns: bool
) -> Subscription | None:
    """Subscribe ``handler`` to ``pattern``; its subscription, or None where refused.

    On a transport without patterns, check instead that it refuses, naming the pattern
    and why, and that the refusal leaves nothing subscribed.
    """
    if has_patterns:
        return await transport.subscribe(pattern, handler, pattern=True)
    with pytest.raises(SetupError) as refused:
        await transport.subscribe(pattern, handler, pattern=True)
    assert repr(pattern) in str(refused.value)
    assert "sharded pub/sub, which has no patterns" in str(refused.value)
    assert (True, pattern) not in transport._subscriptions
    return None


def skip_on_a_cluster(url: str, why: str) -> None:
    if is_cluster(url):
        pytest.skip(f"not on a cluster yet: {why}")


@pytest.fixture
def ns() -> str:
    """A prefix for this test's channels: the Redis server is shared by every test."""
    return unique_name("ct") + ":"


class Recorder:
    """A delivery handler that records what it gets, on any loop or thread."""

    def __init__(self, result: Callable[[Delivery], Awaitable[None] | None] | None = None) -> None:
        self.deliveries: list[Delivery] = []
        self.threads: list[int] = []
        self.loops: list[asyncio.AbstractEventLoop] = []
        self._result = result
        self._changed = threading.Condition()

    def __call__(self, delivery: Delivery) -> Awaitable[None] | None:
        with self._changed:
            self.deliveries.append(delivery)
            self.threads.append(threading.get_ident())
            self.loops.append(asyncio.get_running_loop())
            self._changed.notify_all()
        return self._result(delivery) if self._result is not None else None

    @property
    def data(self) -> list[bytes]:
        return [delivery.data for delivery in self.deliveries]

    def wait_sync(self, count: int, timeout: float = 5.0) -> list[Delivery]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.deliveries) >= count, timeout):
                raise AssertionError(
                    f"got {len(self.deliveries)} of {count} message(s) within {timeout}s: "
                    f"{self.deliveries!r}"
                )
            return list(self.deliveries)

    async def wait(self, count: int, timeout: float = 5.0) -> list[Delivery]:
        """Wait until at least ``count`` deliveries arrived; return them all."""
        return await asyncio.to_thread(self.wait_sync, count, timeout)


async def settled_count(
    transport: Transport, channel: str, expected: int, timeout: float = 5.0
) -> int:
    """Publish a probe until the receiver count is ``expected`` (Redis drops a closed
    connection's subscriptions when it notices the close, not at once)."""
    deadline = time.monotonic() + timeout
    while True:
        count = await transport.publish(channel, b"probe")
        if count == expected or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.01)


class LoopThread:
    """An event loop running in a thread of its own, for transports on another loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def other_loop() -> Iterator[LoopThread]:
    loop_thread = LoopThread()
    try:
        yield loop_thread
    finally:
        loop_thread.close()


@pytest.fixture
async def open_transport(url: str) -> Any:
    """A factory of connected transports on ``url``, all closed after the test."""
    transports: list[Transport] = []

    async def make() -> Transport:
        transport = transport_from_url(url)
        await transport.connect()
        transports.append(transport)
        return transport

    yield make
    for transport in transports:
        await transport.close()


Open = Callable[[], Awaitable[Transport]]

# (pattern, channel, delivered?) — Redis's glob rules, checked against a real server.
GLOB_CASES: list[tuple[str, str, bool]] = [
    ("*", "anything", True),
    ("user:*", "user:42", True),
    ("user:*", "user:", True),  # * matches nothing, except when the channel is empty
    ("user:*", "users:42", False),
    ("*:created", "user:created", True),
    ("a*b*c", "a-b-c", True),
    ("a*b*c", "abc", True),
    ("a*b*c", "acb", False),
    ("a**", "a", True),
    ("?", "x", True),
    ("?", "", False),
    ("?", "xy", False),
    ("a?c", "abc", True),
    ("a?c", "ac", False),
    ("?", "é", False),  # ? is one byte; é is two in UTF-8
    ("??", "é", True),
    ("[abc]", "b", True),
    ("[abc]", "d", False),
    ("[^abc]", "d", True),
    ("[^abc]", "a", False),
    ("[!abc]", "!", True),  # ! does not negate (fnmatch's way); it is a member
    ("[!abc]", "d", False),
    ("[a-c]x", "bx", True),
    ("[a-c]x", "dx", False),
    ("[c-a]", "b", True),  # a reversed range is the same range
    ("[^a-c]", "d", True),
    ("[^a-c]", "b", False),
    ("[a-]", "^", True),  # "a-]" is the range from ] to a
    ("[a-]", "-", False),
    ("[]", "]", False),  # an empty class matches nothing
    ("[]a]", "a", False),
    ("[abc", "b", True),  # an unclosed class runs to the end of the pattern
    ("[\\]]", "]", True),
    ("[\\^a]", "^", True),
    ("\\*", "*", True),
    ("\\*", "x", False),
    ("\\?", "?", True),
    ("\\[a]", "[a]", True),
    ("a\\", "a\\", True),  # a trailing backslash is itself
    ("\\a", "a", True),
    ("[*]", "*", True),
    ("[*]", "x", False),
    ("*.responses", "svc.responses", True),
    ("caller:*", "caller:", True),
    ("ü*", "über", True),
]


class TestTransportContract:
    """What every transport promises (``daebus.transport.base.Transport``)."""

    async def test_publish_reaches_a_subscriber_on_its_loop(
        self, open_transport: Open, ns: str
    ) -> None:
        publisher, subscriber = await open_transport(), await open_transport()
        recorder = Recorder()
        await subscriber.subscribe(ns + "events", recorder)

        assert await publisher.publish(ns + "events", b"hello") == 1

        (delivery,) = await recorder.wait(1)
        assert delivery == Delivery(ns + "events", b"hello", None)
        assert recorder.loops == [asyncio.get_running_loop()]

    async def test_no_subscriber_means_zero_receivers(self, open_transport: Open, ns: str) -> None:
        publisher = await open_transport()
        assert await publisher.publish(ns + "nobody", b"x") == 0
        assert publisher.publish_blocking(ns + "nobody", b"x") == 0

    async def test_a_publisher_receives_its_own_messages(
        self, open_transport: Open, ns: str
    ) -> None:
        transport = await open_transport()
        recorder = Recorder()
        await transport.subscribe(ns + "self", recorder)
        assert await transport.publish(ns + "self", b"me") == 1
        await recorder.wait(1)

    async def test_receivers_are_counted_per_connection_and_per_pattern(
        self, open_transport: Open, ns: str, has_patterns: bool
    ) -> None:
        first, second, publisher = (
            await open_transport(),
            await open_transport(),
            await open_transport(),
        )
        on_first, on_second = Recorder(), Recorder()
        await first.subscribe(ns + "orders:1", on_first)
        for pattern in ("orders:*", "orders:?", "invoices:*"):
            await subscribe_pattern(first, ns + pattern, on_first, has_patterns)
        await second.subscribe(ns + "orders:1", on_second)

        matching = [ns + "orders:*", ns + "orders:?"] if has_patterns else []
        assert await publisher.publish(ns + "orders:1", b"o") == 2 + len(matching)

        got = await on_first.wait(1 + len(matching))
        assert sorted((d.channel, d.pattern or "") for d in got) == [
            (ns + "orders:1", ""),
            *((ns + "orders:1", pattern) for pattern in matching),
        ]
        assert [d.pattern for d in await on_second.wait(1)] == [None]
        # orders:* only
        assert await publisher.publish(ns + "orders:12", b"o") == int(has_patterns)

    async def test_handlers_sharing_a_channel_share_one_subscription(
        self, open_transport: Open, ns: str
    ) -> None:
        subscriber, publisher = await open_transport(), await open_transport()
        recorders = [Recorder(), Recorder(), Recorder()]
        subscriptions = [await subscriber.subscribe(ns + "shared", r) for r in recorders]

        assert await publisher.publish(ns + "shared", b"1") == 1
        for recorder in recorders:
            assert (await recorder.wait(1))[0].data == b"1"

        await subscriptions[0].unsubscribe()
        await subscriptions[0].unsubscribe()  # idempotent
        assert await publisher.publish(ns + "shared", b"2") == 1
        assert [d.data for d in await recorders[1].wait(2)] == [b"1", b"2"]
        assert [d.data for d in await recorders[2].wait(2)] == [b"1", b"2"]

        await subscriptions[1].unsubscribe()
        await subscriptions[2].unsubscribe()
        assert await settled_count(publisher, ns + "shared", 0) == 0
        await asyncio.sleep(QUIET)  # an absence window: nothing more may arrive
        assert recorders[0].data == [b"1"]
        assert recorders[1].data == [b"1", b"2"]

    async def test_unsubscribing_a_pattern(
        self, open_transport: Open, ns: str, has_patterns: bool
    ) -> None:
        subscriber, publisher = await open_transport(), await open_transport()
        recorder = Recorder()
        subscription = await subscribe_pattern(subscriber, ns + "p:*", recorder, has_patterns)
        if subscription is None:
            assert await publisher.publish(ns + "p:1", b"1") == 0
            return
        assert await publisher.publish(ns + "p:1", b"1") == 1
        await recorder.wait(1)

        await subscription.unsubscribe()
        assert await settled_count(publisher, ns + "p:2", 0) == 0
        await asyncio.sleep(QUIET)  # an absence window: nothing more may arrive
        assert recorder.data == [b"1"]

    async def test_glob_rules_are_redis_rules(
        self, open_transport: Open, ns: str, has_patterns: bool
    ) -> None:
        subscriber, publisher = await open_transport(), await open_transport()
        recorder = Recorder()
        if not has_patterns:
            await subscribe_pattern(subscriber, f"{ns}000|*", recorder, has_patterns)
            return
        # One literal prefix per case, so that no case's pattern matches another's channel.
        for number, (pattern, _, _) in enumerate(GLOB_CASES):
            await subscriber.subscribe(f"{ns}{number:03d}|{pattern}", recorder, pattern=True)

        counts = {}
        for number, (_, channel, _) in enumerate(GLOB_CASES):
            counts[number] = await publisher.publish(f"{ns}{number:03d}|{channel}", b"g")

        expected = {number: int(hit) for number, (_, _, hit) in enumerate(GLOB_CASES)}
        wrong = {
            GLOB_CASES[n][:2]: (counts[n], expected[n]) for n in counts if counts[n] != expected[n]
        }
        assert not wrong, f"(pattern, channel): (count, expected): {wrong}"
        delivered = await recorder.wait(sum(expected.values()))
        assert sorted(d.channel for d in delivered) == sorted(
            f"{ns}{n:03d}|{GLOB_CASES[n][1]}" for n, hit in expected.items() if hit
        )
        for delivery in delivered:
            prefix = delivery.channel.split("|", 1)[0]
            assert delivery.pattern is not None
            assert delivery.pattern.startswith(prefix + "|")

    async def test_a_star_does_not_match_an_empty_channel(
        self, open_transport: Open, has_patterns: bool
    ) -> None:
        subscriber, publisher = await open_transport(), await open_transport()
        recorder = Recorder()
        await subscribe_pattern(subscriber, "*", recorder, has_patterns)
        assert await publisher.publish("", b"empty") == 0

    async def test_a_channel_name_is_never_a_pattern(self, open_transport: Open, ns: str) -> None:
        subscriber, publisher = await open_transport(), await open_transport()
        recorder = Recorder()
        await subscriber.subscribe(ns + "a*", recorder)  # pattern=False: literally "a*"
        assert await publisher.publish(ns + "ab", b"no") == 0
        assert await publisher.publish(ns + "a*", b"yes") == 1
        (delivery,) = await recorder.wait(1)
        assert (delivery.channel, delivery.pattern, delivery.data) == (ns + "a*", None, b"yes")

    async def test_one_publishers_messages_arrive_in_order(
        self, open_transport: Open, ns: str, has_patterns: bool
    ) -> None:
        subscriber, publisher = await open_transport(), await open_transport()
        recorder = Recorder()
        await subscriber.subscribe(ns + "seq", recorder)
        await subscribe_pattern(subscriber, ns + "seq*", recorder, has_patterns)
        patterns = [None, ns + "seq*"] if has_patterns else [None]
        messages = [str(i).encode() for i in range(300)]

        futures = [publisher.publish_nowait(ns + "seq", m) for m in messages]
        assert await asyncio.gather(*futures) == [len(patterns)] * len(messages)

        got = await recorder.wait(len(patterns) * len(messages))
        # Each message once for the channel, then once for the pattern, as Redis sends it.
        assert [(d.data, d.pattern) for d in got] == [
            (m, pattern) for m in messages for pattern in patterns
        ]

    async def test_publish_many_keeps_order_and_counts(
        self, open_transport: Open, ns: str, has_patterns: bool
    ) -> None:
        subscriber, publisher = await open_transport(), await open_transport()
        recorder = Recorder()
        await subscriber.subscribe(ns + "m:a", recorder)
        await subscriber.subscribe(ns + "m:c", recorder)
        await subscribe_pattern(subscriber, ns + "m:*", recorder, has_patterns)
        batch = [
            (ns + "m:a", b"1"),
            (ns + "m:b", b"2"),
            (ns + "none", b"3"),
            (ns + "m:c", b"4"),
            (ns + "m:a", b"5"),
        ]
        p = int(has_patterns)

        assert await publisher.publish_many(batch) == [1 + p, p, 0, 1 + p, 1 + p]
        assert await publisher.publish_many([]) == []

        if has_patterns:
            got = await recorder.wait(7)
            assert [d.data for d in got] == [b"1", b"1", b"2", b"4", b"4", b"5", b"5"]
        else:
            # m:a and m:c may be on two shards, read on two connections: each channel's
            # messages come in order, the two channels' in either.
            got = await recorder.wait(3)
            assert [d.data for d in got if d.channel == ns + "m:a"] == [b"1", b"5"]
            assert [d.data for d in got if d.channel == ns + "m:c"] == [b"4"]

    async def test_publish_blocking_from_other_threads(self, open_transport: Open, ns: str) -> None:
        subscriber, publisher = await open_transport(), await open_transport()
        recorder = Recorder()
        await subscriber.subscribe(ns + "threads", recorder)

        def send(prefix: str) -> list[int]:
            return [
                publisher.publish_blocking(ns + "threads", f"{prefix}{i}".encode())
                for i in range(50)
            ]

        counts = await asyncio.gather(*(asyncio.to_thread(send, p) for p in "abc"))
        assert counts == [[1] * 50] * 3

        got = await recorder.wait(150)
        for prefix in "abc":
            mine = [d.data for d in got if d.data.startswith(prefix.encode())]
            assert mine == [f"{prefix}{i}".encode() for i in range(50)]
        assert set(recorder.loops) == {asyncio.get_running_loop()}

    async def test_an_awaitable_from_a_handler_holds_back_the_next_message(
        self, open_transport: Open, ns: str
    ) -> None:
        subscriber, watcher, publisher = (
            await open_transport(),
            await open_transport(),
            await open_transport(),
        )
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def wait_for_gate() -> None:
            await gate

        recorder = Recorder(lambda d: wait_for_gate() if d.data == b"first" else None)
        seen_elsewhere = Recorder()
        await subscriber.subscribe(ns + "bp", recorder)
        await watcher.subscribe(ns + "bp", seen_elsewhere)

        for data in (b"first", b"second", b"third"):
            assert await publisher.publish(ns + "bp", data) == 2
        await seen_elsewhere.wait(3)  # all three were sent...
        await asyncio.sleep(QUIET)  # an absence window: nothing more may arrive
        assert recorder.data == [b"first"]  # ...but the gated reader holds them back

        gate.set_result(None)
        assert [d.data for d in await recorder.wait(3)] == [b"first", b"second", b"third"]

    async def test_failing_handlers_do_not_stop_delivery(
        self, open_transport: Open, ns: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        subscriber, publisher = await open_transport(), await open_transport()

        def explode(delivery: Delivery) -> None:
            raise RuntimeError("handler broke")

        async def fail_later() -> None:
            raise RuntimeError("awaitable broke")

        recorder = Recorder()
        await subscriber.subscribe(ns + "err", explode)
        await subscriber.subscribe(ns + "err", Recorder(lambda d: fail_later()))
        await subscriber.subscribe(ns + "err", recorder)

        assert await publisher.publish(ns + "err", b"1") == 1
        assert await publisher.publish(ns + "err", b"2") == 1
        assert [d.data for d in await recorder.wait(2)] == [b"1", b"2"]
        assert "handler broke" in caplog.text or "failed" in caplog.text

    async def test_binary_payloads_and_unicode_channels_round_trip(
        self, open_transport: Open, ns: str
    ) -> None:
        subscriber, publisher = await open_transport(), await open_transport()
        recorder = Recorder()
        channel = ns + "bïnärÿ:✓"
        await subscriber.subscribe(channel, recorder)
        payloads = [bytes(range(256)), b"", b"\x00\xff" * 300_000, "é✓".encode()]

        for payload in payloads:
            assert await publisher.publish(channel, payload) == 1

        got = await recorder.wait(len(payloads))
        assert [d.data for d in got] == payloads
        assert {d.channel for d in got} == {channel}

    async def test_close_drops_subscriptions_and_is_idempotent(
        self, open_transport: Open, ns: str, has_patterns: bool
    ) -> None:
        subscriber, publisher = await open_transport(), await open_transport()
        recorder = Recorder()
        await subscriber.subscribe(ns + "closing", recorder)
        pattern = await subscribe_pattern(subscriber, ns + "closing*", recorder, has_patterns)
        copies = 1 if pattern is None else 2
        assert await publisher.publish(ns + "closing", b"before") == copies
        await recorder.wait(copies)

        await subscriber.close()
        await subscriber.close()

        assert await settled_count(publisher, ns + "closing", 0) == 0
        await asyncio.sleep(QUIET)  # an absence window: nothing more may arrive
        assert recorder.data == [b"before"] * copies
        with pytest.raises(TransportError):
            await subscriber.publish(ns + "closing", b"from a closed transport")

    async def test_subscribing_on_a_closed_transport_fails_at_once(
        self, open_transport: Open, ns: str
    ) -> None:
        transport = await open_transport()
        await transport.close()
        with pytest.raises(TransportError):
            await asyncio.wait_for(transport.subscribe(ns + "closed", Recorder()), 0.5)

    async def test_a_closed_transport_connects_again(self, open_transport: Open, ns: str) -> None:
        subscriber, publisher = await open_transport(), await open_transport()
        await subscriber.subscribe(ns + "old", Recorder())
        await subscriber.close()

        await subscriber.connect()
        recorder = Recorder()
        await subscriber.subscribe(ns + "again", recorder)
        assert await publisher.publish(ns + "again", b"back") == 1
        assert [d.data for d in await recorder.wait(1)] == [b"back"]
        assert await settled_count(publisher, ns + "old", 0) == 0
        assert await subscriber.publish(ns + "again", b"me too") == 1
        await recorder.wait(2)

    async def test_transports_on_different_loops_and_threads(
        self, open_transport: Open, url: str, ns: str, other_loop: LoopThread
    ) -> None:
        here = await open_transport()
        there = transport_from_url(url)
        at_there, at_here = Recorder(), Recorder()
        other_loop.run(there.connect())
        try:
            other_loop.run(there.subscribe(ns + "to-there", at_there))
            await here.subscribe(ns + "to-here", at_here)

            assert await here.publish(ns + "to-there", b"ping") == 1
            assert [d.data for d in await at_there.wait(1)] == [b"ping"]
            assert at_there.loops == [other_loop.loop]
            assert at_there.threads == [other_loop.thread.ident]

            assert other_loop.run(there.publish(ns + "to-here", b"pong")) == 1
            assert there.publish_blocking(ns + "to-here", b"from this thread") == 1
            got = await at_here.wait(2)
            assert [d.data for d in got] == [b"pong", b"from this thread"]
            assert set(at_here.loops) == {asyncio.get_running_loop()}
        finally:
            other_loop.run(there.close())


# -- streams: the commands of durable channels ------------------------------------------

#: The most entries Redis may keep past a trimming bound: ``~`` removes whole nodes of
#: the stream only, of up to 100 entries each (stream-node-max-entries).
NODE = 100


def stream_ids(url: str, stream: str) -> list[str]:
    """The ids a stream holds (``XRANGE stream - +``), read beside the transport."""
    if url.startswith("memory://"):
        return [entry.id for entry in broker_for(url).streams.entries(stream)]
    client = sync_client(url) if is_sentinel_url(url) else client_for(url)
    try:
        return [bytes(entry_id).decode() for entry_id, _ in client.xrange(stream)]
    finally:
        client.close()


class TestRegistryContract:
    """Entries that expire, listed in an index; and the channels with subscribers."""

    async def test_entries_are_listed_until_they_expire_or_are_dropped(
        self, open_transport: Open, url: str, ns: str
    ) -> None:
        skip_on_a_cluster(url, "daebus's admin (open_admin), which lists entries, reads one node")
        transport = await open_transport()
        index = ns + "index"
        await transport.put_entry(index, ns + "a", b'{"a": 1}', 60_000)
        await transport.put_entry(index, ns + "b", b"short", 1000)
        await transport.put_entry(index, ns + "a", b'{"a": 2}', 60_000)  # replaced
        with open_admin(url) as admin:
            listed = admin.entries(index)
            assert [(key, value) for key, value, _ in listed] == [
                (ns + "a", b'{"a": 2}'),
                (ns + "b", b"short"),
            ]
            assert 50 < listed[0][2] <= 60
            assert 0 <= listed[1][2] <= 1
            await wait_until(
                lambda: [key for key, _, _ in admin.entries(index)] == [ns + "a"],
                message="the short-lived entry never expired",
            )
            await transport.drop_entry(index, ns + "a")
            await transport.drop_entry(index, ns + "a")  # idempotent
            assert admin.entries(index) == []
            assert admin.entries(ns + "no-such-index") == []

    async def test_channels_with_a_subscriber_are_listed(
        self, open_transport: Open, url: str, ns: str
    ) -> None:
        skip_on_a_cluster(url, "daebus's admin (open_admin), which lists channels, reads one node")
        subscriber = await open_transport()
        await subscriber.subscribe(ns + "one", Recorder())
        await subscriber.subscribe(ns + "two", Recorder())
        await subscriber.subscribe(ns + "pat:*", Recorder(), pattern=True)
        with open_admin(url) as admin:
            assert [c for c in admin.channels() if c.startswith(ns)] == [ns + "one", ns + "two"]
            assert admin.channels(ns + "t*") == [ns + "two"]
            assert admin.subscribers([ns + "one", ns + "none"]) == {ns + "one": 1, ns + "none": 0}

    async def test_entries_on_a_closed_transport_fail(self, open_transport: Open, ns: str) -> None:
        transport = await open_transport()
        await transport.close()
        with pytest.raises(TransportError):
            await transport.put_entry(ns + "index", ns + "a", b"x", 1000)


def in_order(ids: list[str]) -> bool:
    """Whether the ids increase strictly, as Redis orders them."""
    return all(parse_id(a) < parse_id(b) for a, b in itertools.pairwise(ids))


async def add_many(transport: Transport, stream: str, count: int, **options: Any) -> list[str]:
    """Add ``count`` entries ``0``, ``1``... in one go (pipelined on Redis); their ids."""
    return list(
        await asyncio.gather(
            *(
                transport.stream_add(stream, {"data": str(n).encode()}, 10_000, **options)
                for n in range(count)
            )
        )
    )


class TestStreamContract:
    """The stream commands of ``Transport``, as Redis behaves: durable channels use them."""

    async def test_ids_increase_and_entries_keep_their_fields(
        self, open_transport: Open, url: str, ns: str
    ) -> None:
        transport = await open_transport()
        stream = ns + "ids"
        ids = [
            await transport.stream_add(stream, {"data": b"a", "extra": b"\x00\xff"}, 100),
            *await add_many(transport, stream, 3),
            await asyncio.to_thread(transport.stream_add_blocking, stream, {"data": b"t"}, 100),
        ]
        ids.append(await transport.stream_add(stream, {"data": b"last"}, 100))

        assert all(re.fullmatch(r"\d+-\d+", entry_id) for entry_id in ids)
        assert in_order(ids)
        assert stream_ids(url, stream) == ids
        assert await transport.stream_create_group(stream, "g", "0")
        entries = await transport.stream_read(stream, "g", "c", 100, 10)
        assert [e.id for e in entries] == ids
        assert [e.deliveries for e in entries] == [1] * len(ids)
        assert entries[0].fields == {"data": b"a", "extra": b"\x00\xff"}
        assert [e.fields["data"] for e in entries[1:]] == [b"0", b"1", b"2", b"t", b"last"]

    async def test_many_entries_are_added_in_order_from_a_thread(
        self, open_transport: Open, url: str, ns: str
    ) -> None:
        transport = await open_transport()
        one, two = ns + "many-1", ns + "many-2"
        entries = [(one if n % 2 else two, {"data": str(n).encode()}) for n in range(6)]
        ids = await asyncio.to_thread(transport.stream_add_many_blocking, entries, 100)
        aged = await asyncio.to_thread(
            transport.stream_add_many_blocking, entries[:2], 100, max_age_ms=60_000
        )

        assert len(ids) == 6
        assert stream_ids(url, one) == [ids[1], ids[3], ids[5], aged[1]]
        assert stream_ids(url, two) == [ids[0], ids[2], ids[4], aged[0]]
        assert await asyncio.to_thread(transport.stream_add_many_blocking, [], 100) == []

    async def test_a_group_is_created_once_and_makes_its_stream(
        self, open_transport: Open, url: str, ns: str
    ) -> None:
        transport = await open_transport()
        stream = ns + "group"
        assert await transport.stream_create_group(stream, "g", "$") is True
        assert await transport.stream_create_group(stream, "g", "0") is False  # BUSYGROUP
        assert stream_ids(url, stream) == []
        assert await transport.stream_read(stream, "g", "c", 10, 10) == []
        with pytest.raises(TransportError):
            await transport.stream_create_group(stream, "other", "not-an-id")

    async def test_a_new_group_starts_where_it_is_told(self, open_transport: Open, ns: str) -> None:
        transport = await open_transport()
        stream = ns + "start"
        first, second = await add_many(transport, stream, 2)
        assert await transport.stream_create_group(stream, "latest", "$")
        assert await transport.stream_create_group(stream, "earliest", "0")
        assert await transport.stream_create_group(stream, "after", first)
        third = await transport.stream_add(stream, {"data": b"2"}, 100)

        async def read(group: str) -> list[str]:
            return [e.id for e in await transport.stream_read(stream, group, "c", 10, 10)]

        assert await read("latest") == [third]
        assert await read("earliest") == [first, second, third]
        assert await read("after") == [second, third]

    async def test_groups_each_get_every_entry_and_members_share_them(
        self, open_transport: Open, ns: str
    ) -> None:
        transport, other = await open_transport(), await open_transport()
        stream = ns + "share"
        for group in ("billing", "audit"):
            assert await transport.stream_create_group(stream, group, "$")
        ids = await add_many(transport, stream, 5)

        taken_by_a = await transport.stream_read(stream, "billing", "a", 2, 10)
        taken_by_b = await other.stream_read(stream, "billing", "b", 10, 10)
        assert [e.id for e in taken_by_a] == ids[:2]
        assert [e.id for e in taken_by_b] == ids[2:]
        assert await transport.stream_read(stream, "billing", "a", 10, 10) == []
        assert [e.id for e in await other.stream_read(stream, "audit", "c", 10, 10)] == ids

    async def test_a_waiting_read_gets_an_entry_added_meanwhile(
        self, open_transport: Open, ns: str
    ) -> None:
        reader, writer = await open_transport(), await open_transport()
        stream = ns + "wait"
        assert await reader.stream_create_group(stream, "g", "$")
        waiting = asyncio.ensure_future(reader.stream_read(stream, "g", "c", 10, 10_000))
        await asyncio.sleep(QUIET)  # most likely waiting by now; if not, it reads at once
        entry_id = await writer.stream_add(stream, {"data": b"late"}, 100)
        (entry,) = await asyncio.wait_for(waiting, 10)
        assert (entry.id, entry.fields, entry.deliveries) == (entry_id, {"data": b"late"}, 1)

    async def test_a_missing_group_is_a_transport_error(
        self, open_transport: Open, ns: str
    ) -> None:
        transport = await open_transport()
        stream = ns + "nogroup"
        (entry_id,) = await add_many(transport, stream, 1)
        for missing_stream in (stream, ns + "no-such-stream"):
            with pytest.raises(TransportError, match="NOGROUP"):
                await transport.stream_read(missing_stream, "g", "c", 1, 10)
            with pytest.raises(TransportError, match="NOGROUP"):
                await transport.stream_claim(missing_stream, "g", "c", [entry_id])
            with pytest.raises(TransportError, match="NOGROUP"):
                await transport.stream_autoclaim(missing_stream, "g", "c", 0, 10)
            assert await transport.stream_ack(missing_stream, "g", [entry_id]) == 0

    async def test_an_ack_counts_the_entries_that_were_pending(
        self, open_transport: Open, ns: str
    ) -> None:
        transport = await open_transport()
        stream = ns + "ack"
        assert await transport.stream_create_group(stream, "g", "$")
        ids = await add_many(transport, stream, 4)
        await transport.stream_read(stream, "g", "c", 3, 10)  # ids[3] stays unread

        assert await transport.stream_ack(stream, "g", [ids[0], ids[1], "1-1"]) == 2
        assert await transport.stream_ack(stream, "g", [ids[0]]) == 0
        assert await transport.stream_ack(stream, "g", [ids[3]]) == 0  # never handed out
        assert await transport.stream_ack(stream, "g", [ids[2], ids[2]]) == 1
        assert await transport.stream_ack(stream, "g", []) == 0

    async def test_a_claim_moves_entries_and_counts_deliveries(
        self, open_transport: Open, ns: str
    ) -> None:
        transport = await open_transport()
        stream = ns + "claim"
        assert await transport.stream_create_group(stream, "g", "$")
        ids = await add_many(transport, stream, 3)
        await transport.stream_read(stream, "g", "a", 10, 10)

        claimed = await transport.stream_claim(stream, "g", "b", [ids[2], ids[0]])
        assert [(e.id, e.fields, e.deliveries) for e in claimed] == [
            (ids[2], {"data": b"2"}, 2),
            (ids[0], {"data": b"0"}, 2),
        ]
        # A touch (JUSTID) returns nothing and leaves the count alone.
        assert await transport.stream_claim(stream, "g", "a", [ids[0]], touch=True) == []
        (again,) = await transport.stream_claim(stream, "g", "b", [ids[0]])
        assert again.deliveries == 3
        # Acknowledged or unknown entries are not pending: nothing to claim.
        assert await transport.stream_ack(stream, "g", [ids[1]]) == 1
        assert await transport.stream_claim(stream, "g", "b", [ids[1], "1-1"]) == []
        assert await transport.stream_claim(stream, "g", "b", [ids[1]], touch=True) == []
        assert await transport.stream_claim(stream, "g", "b", []) == []
        assert await transport.stream_claim(stream, "g", "b", [], touch=True) == []
        assert await transport.stream_ack(stream, "g", ids) == 2  # still pending: 0 and 2

    async def test_autoclaim_takes_entries_idle_long_enough(
        self, open_transport: Open, ns: str
    ) -> None:
        transport = await open_transport()
        stream = ns + "autoclaim"
        assert await transport.stream_create_group(stream, "g", "$")
        ids = await add_many(transport, stream, 3)
        await transport.stream_read(stream, "g", "dead", 10, 10)

        assert await transport.stream_autoclaim(stream, "g", "b", 3_600_000, 10) == ([], "0-0")
        first, next_start = await transport.stream_autoclaim(stream, "g", "b", 0, 2)
        assert [(e.id, e.fields["data"], e.deliveries) for e in first] == [
            (ids[0], b"0", 2),
            (ids[1], b"1", 2),
        ]
        assert next_start == ids[2]  # where the scan stopped
        everything, next_start = await transport.stream_autoclaim(stream, "g", "c", 0, 10)
        assert next_start == "0-0"  # the whole pending list was seen
        assert [(e.id, e.deliveries) for e in everything] == [
            (ids[0], 3),
            (ids[1], 3),
            (ids[2], 2),
        ]

    async def test_autoclaim_looks_at_ten_times_its_count_and_says_where_it_stopped(
        self, open_transport: Open, ns: str
    ) -> None:
        transport = await open_transport()
        stream = ns + "scan"
        assert await transport.stream_create_group(stream, "g", "$")
        ids = await add_many(transport, stream, 30)
        await transport.stream_read(stream, "g", "busy", 30, 10)

        # None is idle an hour: 2 x 10 entries are looked at, the next look starts after.
        assert await transport.stream_autoclaim(stream, "g", "b", 3_600_000, 2) == ([], ids[20])
        rest = await transport.stream_autoclaim(stream, "g", "b", 3_600_000, 2, start=ids[20])
        assert rest == ([], "0-0")

    async def test_autoclaim_starts_where_it_is_told(self, open_transport: Open, ns: str) -> None:
        transport = await open_transport()
        stream = ns + "cursor"
        assert await transport.stream_create_group(stream, "g", "$")
        ids = await add_many(transport, stream, 4)
        await transport.stream_read(stream, "g", "dead", 10, 10)

        taken, _ = await transport.stream_autoclaim(stream, "g", "b", 0, 10, start=ids[2])
        assert [e.id for e in taken] == ids[2:]

    async def test_a_member_leaves_its_group_only_once_it_holds_nothing(
        self, open_transport: Open, ns: str
    ) -> None:
        transport = await open_transport()
        stream = ns + "leave"
        assert await transport.stream_create_group(stream, "g", "$")
        (entry_id,) = await add_many(transport, stream, 1)
        await transport.stream_read(stream, "g", "member", 10, 10)

        assert await transport.stream_leave_group(stream, "g", "member") is False
        assert await transport.stream_ack(stream, "g", [entry_id]) == 1
        assert await transport.stream_leave_group(stream, "g", "member") is True

    async def test_an_acknowledgement_may_delete_the_entries(
        self, open_transport: Open, url: str, ns: str
    ) -> None:
        transport = await open_transport()
        stream = ns + "acked-deleted"
        assert await transport.stream_create_group(stream, "g", "$")
        first, second = await add_many(transport, stream, 2)
        await transport.stream_read(stream, "g", "member", 10, 10)

        assert await transport.stream_ack(stream, "g", [first], delete=True) == 1
        assert await transport.stream_ack(stream, "g", [second]) == 1
        assert stream_ids(url, stream) == [second]

    async def test_pending_elsewhere_counts_the_other_members_entries(
        self, open_transport: Open, ns: str
    ) -> None:
        transport = await open_transport()
        stream = ns + "elsewhere"
        assert await transport.stream_create_group(stream, "g", "$")
        assert await transport.stream_pending_elsewhere(stream, "g", "me") == 0
        await add_many(transport, stream, 3)
        await transport.stream_read(stream, "g", "other", 2, 10)
        await transport.stream_read(stream, "g", "me", 1, 10)

        assert await transport.stream_pending_elsewhere(stream, "g", "me") == 2
        assert await transport.stream_pending_elsewhere(stream, "g", "other") == 1

    async def test_claims_drop_pending_entries_trimmed_away(
        self, open_transport: Open, url: str, ns: str
    ) -> None:
        transport = await open_transport()
        stream = ns + "trimmed"
        assert await transport.stream_create_group(stream, "g", "$")
        old = await add_many(transport, stream, 2 * NODE)
        assert len(await transport.stream_read(stream, "g", "dead", 10 * NODE, 10)) == 2 * NODE
        await asyncio.sleep(0.3)
        await transport.stream_add(stream, {"data": b"new"}, 10_000, max_age_ms=100)
        kept = set(stream_ids(url, stream))
        gone = [entry_id for entry_id in old if entry_id not in kept]
        still = [entry_id for entry_id in old if entry_id in kept]
        assert gone

        # Redis drops a deleted entry from the pending list as soon as a claim meets it,
        # idle or not: it is neither returned nor pending any more.
        assert (await transport.stream_autoclaim(stream, "g", "b", 3_600_000, 10 * NODE))[0] == []
        assert await transport.stream_claim(stream, "g", "b", gone[:3]) == []
        assert await transport.stream_ack(stream, "g", gone) == 0
        taken, _ = await transport.stream_autoclaim(stream, "g", "b", 0, 10 * NODE)
        assert [e.id for e in taken] == still
        assert await transport.stream_ack(stream, "g", still) == len(still)

    async def test_trimming_by_length_keeps_about_the_last_entries(
        self, open_transport: Open, url: str, ns: str
    ) -> None:
        transport = await open_transport()
        count = 2 * NODE + 50

        def add_from_a_thread(stream: str) -> list[str]:
            return [
                transport.stream_add_blocking(stream, {"data": str(n).encode()}, 10)
                for n in range(count)
            ]

        async def add_from_the_loop(stream: str) -> list[str]:
            return [
                await transport.stream_add(stream, {"data": str(n).encode()}, 10)
                for n in range(count)
            ]

        for stream, ids in (
            (ns + "len", await add_from_the_loop(ns + "len")),
            (ns + "len-blocking", await asyncio.to_thread(add_from_a_thread, ns + "len-blocking")),
        ):
            kept = stream_ids(url, stream)
            assert 10 <= len(kept) <= 10 + NODE
            assert kept == ids[-len(kept) :]

    async def test_trimming_by_age_drops_old_entries_and_keeps_young_ones(
        self, open_transport: Open, url: str, ns: str
    ) -> None:
        transport = await open_transport()
        stream = ns + "age"
        old = await add_many(transport, stream, 2 * NODE)
        await asyncio.sleep(0.3)  # every entry is older than 100 ms now
        newest = await transport.stream_add(stream, {"data": b"new"}, 10_000, max_age_ms=100)
        kept = stream_ids(url, stream)
        assert kept[-1] == newest
        assert len(kept) <= 1 + NODE
        assert kept[:-1] == old[len(old) - len(kept) + 1 :]

        # Young entries stay; and from another thread, it trims alike.
        young = await add_many(transport, stream, 5, max_age_ms=60_000)
        assert stream_ids(url, stream)[-6:] == [newest, *young]
        await asyncio.sleep(0.3)
        last = await asyncio.to_thread(
            lambda: transport.stream_add_blocking(stream, {"data": b"z"}, 10_000, max_age_ms=100)
        )
        kept = stream_ids(url, stream)
        assert kept[-1] == last
        assert len(kept) <= 1 + NODE

    async def test_both_bounds_apply_together(
        self, open_transport: Open, url: str, ns: str
    ) -> None:
        transport = await open_transport()
        stream = ns + "both"
        ids = await add_many(transport, stream, 3 * NODE, max_age_ms=3_600_000)
        for _ in range(2 * NODE):
            ids.append(await transport.stream_add(stream, {"data": b"x"}, 10, max_age_ms=3_600_000))
        kept = stream_ids(url, stream)
        assert 10 <= len(kept) <= 10 + NODE
        assert kept == ids[-len(kept) :]

    async def test_stream_commands_on_a_closed_transport_fail(
        self, open_transport: Open, ns: str
    ) -> None:
        transport = await open_transport()
        stream = ns + "closed"
        assert await transport.stream_create_group(stream, "g", "$")
        (entry_id,) = await add_many(transport, stream, 1)
        await transport.close()
        attempts: list[Callable[[], Awaitable[object]]] = [
            lambda: transport.stream_add(stream, {"data": b"x"}, 10),
            lambda: transport.stream_create_group(stream, "h", "$"),
            lambda: transport.stream_read(stream, "g", "c", 1, 10),
            lambda: transport.stream_ack(stream, "g", [entry_id]),
            lambda: transport.stream_claim(stream, "g", "c", [entry_id]),
            lambda: transport.stream_claim(stream, "g", "c", [entry_id], touch=True),
            lambda: transport.stream_autoclaim(stream, "g", "c", 0, 1),
        ]
        for attempt in attempts:
            with pytest.raises(TransportError):
                await attempt()
