"""Retention of durable channels: ``broadcast.send(..., durable=True, maxlen=, max_age=)``.

Every way a durable message is sent (inside a service, from a ``def`` or an ``async def``
handler, outside any app, through a redis-py client given to ``PubSubBroadcast``) trims
the channel's stream by length and by age, on a real server and on ``memory://``. The
trimming commands themselves are in test_transport_contract.py.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from _apps import Apps
from _helpers import unique_name
from daebus import Daebus, broadcast, request
from daebus.protocol import stream_key
from daebus.pubsub import PubSubBroadcast
from daebus.transport._server_clock import ServerClock
from daebus.transport.memory import broker_for

pytestmark = pytest.mark.timeout(60)

#: ``~`` trims whole nodes of a stream only, of up to 100 entries each: a stream may keep
#: that many more than its bounds say.
NODE = 100
#: Longer than the ages the tests give, so that what was sent before is older.
OLDER = 0.3


@pytest.fixture
def outside(where: Apps) -> Iterator[str]:
    """Code outside any app sends to the server of ``where``."""
    os.environ["DAEBUS_REDIS_URL"] = where.url
    try:
        yield where.url
    finally:
        del os.environ["DAEBUS_REDIS_URL"]


def _ids(url: str, stream: str) -> list[str]:
    if url.startswith("memory://"):
        return [entry.id for entry in broker_for(url).streams.entries(stream)]
    client = redis.Redis.from_url(url)
    try:
        return [bytes(entry_id).decode() for entry_id, _ in client.xrange(stream)]
    finally:
        client.close()


def _fill(channel: str) -> list[str]:
    """Two nodes' worth of messages with no age limit; they are older than OLDER after."""
    ids: list[str] = broadcast.send_many([(channel, n) for n in range(2 * NODE)], durable=True)
    time.sleep(OLDER)
    return ids


def test_outside_any_app_a_send_trims_by_age(outside: str) -> None:
    channel = unique_name("age")
    old = _fill(channel)
    newest = broadcast.send(channel, "new", durable=True, max_age=0.1)
    kept = _ids(outside, stream_key(channel))
    assert kept[-1] == newest
    assert len(kept) <= 1 + NODE < len(old)

    young = broadcast.send_many([(channel, n) for n in range(3)], durable=True, max_age=60)
    assert _ids(outside, stream_key(channel))[-4:] == [newest, *young]


def test_outside_any_app_send_many_trims_by_age(outside: str) -> None:
    channel = unique_name("age-many")
    _fill(channel)
    ids = broadcast.send_many([(channel, "a"), (channel, "b")], durable=True, max_age=0.1)
    kept = _ids(outside, stream_key(channel))
    assert kept[-2:] == ids
    assert len(kept) <= 2 + NODE


def test_both_bounds_keep_a_stream_bounded(outside: str) -> None:
    channel = unique_name("both")
    for n in range(3 * NODE):
        broadcast.send(channel, n, durable=True, maxlen=10, max_age=3600)
    assert 10 <= len(_ids(outside, stream_key(channel))) <= 10 + NODE


def test_inside_a_service_every_handler_trims_by_age(where: Apps) -> None:
    channel = unique_name("in-app")
    app = Daebus("retention")

    @app.action("fill")
    def fill() -> Any:
        return broadcast.send_many([(channel, n) for n in range(2 * NODE)], durable=True)

    @app.action("send")
    def send() -> Any:
        return broadcast.send(channel, request.payload, durable=True, max_age=0.1)

    @app.action("send_async")
    async def send_async() -> Any:
        return await broadcast.send(channel, request.payload, durable=True, max_age=0.1)

    @app.action("send_many_async")
    async def send_many_async() -> Any:
        pairs = [(channel, part) for part in request.payload]
        return await broadcast.send_many(pairs, durable=True, max_age=0.1)

    caller = where.caller(where.start(app))
    stream = stream_key(channel)
    for action, payload in (
        ("send", "from a thread"),
        ("send_async", "from the loop"),
        ("send_many_async", ["a", "b"]),
    ):
        assert len(caller.send_request("fill")) == 2 * NODE
        time.sleep(OLDER)
        sent = caller.send_request(action, payload)
        newest = sent if isinstance(sent, list) else [sent]
        kept = _ids(where.url, stream)
        assert kept[-len(newest) :] == newest, action
        assert len(kept) <= len(newest) + NODE, action


def test_a_redis_client_given_to_broadcast_trims_by_age(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        sender = PubSubBroadcast(client)
        channel = unique_name("client")
        sender.send_many([(channel, n) for n in range(2 * NODE)], durable=True)
        time.sleep(OLDER)
        newest = sender.send(channel, "new", durable=True, max_age=0.1)
        kept = _ids(redis_url, stream_key(channel))
        assert kept[-1] == newest
        assert len(kept) <= 1 + NODE
    finally:
        client.close()


@pytest.mark.parametrize("max_age", [0, -1, math.nan, math.inf, "60", True, [60]])
def test_an_age_that_is_not_a_positive_number_is_refused(outside: str, max_age: Any) -> None:
    channel = unique_name("refused")
    with pytest.raises(ValueError, match="max_age must be a positive number of seconds"):
        broadcast.send(channel, 1, durable=True, max_age=max_age)
    with pytest.raises(ValueError, match="max_age must be a positive number of seconds"):
        broadcast.send_many([(channel, 1)], durable=True, max_age=max_age)
    assert _ids(outside, stream_key(channel)) == []


@pytest.mark.parametrize("maxlen", [0, -5, 1.5, True, None])
def test_a_length_that_is_not_a_positive_int_is_refused(outside: str, maxlen: Any) -> None:
    channel = unique_name("refused")
    with pytest.raises(ValueError, match="maxlen must be a positive int"):
        broadcast.send(channel, 1, durable=True, maxlen=maxlen)
    assert _ids(outside, stream_key(channel)) == []


def test_an_age_without_durable_is_refused(outside: str) -> None:
    with pytest.raises(ValueError, match="durable=True"):
        broadcast.send(unique_name("plain"), 1, max_age=60)
    with pytest.raises(ValueError, match="durable=True"):
        broadcast.send_many([(unique_name("plain"), 1)], max_age=60)


def test_a_short_age_is_at_least_a_millisecond(outside: str) -> None:
    channel = unique_name("tiny")
    newest = broadcast.send(channel, "x", durable=True, max_age=1e-6)
    assert _ids(outside, stream_key(channel))[-1] == newest


def test_the_server_clock_is_trusted_for_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ServerClock()
    assert clock.now_ms() is None
    clock.learn([b"1000", b"250000"])  # the server says 1000.25 s since the epoch
    now = clock.now_ms()
    assert now is not None
    assert 1000250 <= now < 1000250 + 60_000
    monkeypatch.setattr(time, "monotonic", lambda: math.inf)
    assert clock.now_ms() is None  # too long ago: ask the server again
