"""Health checks: ping, health_stats and subscriber counts, on a server that runs, one
that was killed, one that hangs, and on the memory transport.

A server that cannot answer must make the checks say so within their timeout: each test
has a pytest timeout far below what a retrying client would take.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from _apps import Apps
from _helpers import dead_url, unique_name, wait_for
from _servers import RedisServer
from daebus import Daebus, TransportError, broadcast, health_stats, ping, subscriber_counts

pytestmark = pytest.mark.timeout(60)


def send(url: str, channel: str, payload: Any) -> str:
    os.environ["DAEBUS_REDIS_URL"] = url
    try:
        message_id = broadcast.send(channel, payload, durable=True)
    finally:
        del os.environ["DAEBUS_REDIS_URL"]
    assert isinstance(message_id, str)
    return message_id


def test_a_running_server_is_healthy(where: Apps) -> None:
    assert ping(where.url) is True
    stats = health_stats(where.url, channels=[])
    assert stats["healthy"] is True
    assert "error" not in stats
    assert stats["channels"] == {}
    if where.url.startswith("memory://"):
        assert stats["connected_clients"] is None
    else:
        assert stats["connected_clients"] >= 1
        assert stats["used_memory"] > 0
        assert isinstance(stats["used_memory_human"], str)


def test_stats_describe_each_group_of_a_durable_channel(where: Apps) -> None:
    channel = unique_name("orders")
    app = Daebus("stats")
    handled: list[Any] = []

    @app.listen(channel, durable=True)
    def record(data: Any) -> None:
        handled.append(data)

    @app.listen(channel, durable=True, group="audit", retries=0, backoff=0.01)
    def fail(data: Any) -> None:
        raise ValueError("no")

    service = where.start(app)
    ids = [send(where.url, channel, n) for n in range(3)]
    wait_for(lambda: len(handled) == 3, message=lambda: f"{handled}")

    def audit_done() -> Any:
        stats = health_stats(where.url, [channel])
        groups = stats["channels"][channel]["groups"]
        # The handled messages are acknowledged just after their handler returns.
        return groups["audit"]["dead_letters"] == 3 and groups[service]["pending"] == 0 and stats

    stats = wait_for(audit_done, message="the audit group did not give up on 3 messages")
    state = stats["channels"][channel]
    assert state["length"] == 3
    assert state["groups"][service] == {
        "consumers": 1,
        "pending": 0,
        "lag": 0,
        "last_delivered_id": ids[-1],
        "dead_letters": 0,
    }
    assert state["groups"]["audit"]["pending"] == 0
    every = health_stats(where.url)["channels"]
    assert every[channel] == state


def test_a_channel_without_a_stream_has_no_groups(where: Apps) -> None:
    channel = unique_name("quiet")
    stats = health_stats(where.url, [channel])
    assert stats["channels"] == {channel: {"length": 0, "groups": {}}}


def test_lag_counts_what_a_group_has_not_read(where: Apps) -> None:
    channel = unique_name("backlog")
    app = Daebus("lagging")

    @app.listen(channel, durable=True)
    def never(data: Any) -> None:
        pass

    service = where.start(app)
    app.stop()
    for n in range(4):
        send(where.url, channel, n)
    group = health_stats(where.url, [channel])["channels"][channel]["groups"][service]
    assert group["lag"] == 4
    assert group["pending"] == 0


def test_subscriber_counts(where: Apps) -> None:
    channel = unique_name("news")
    app = Daebus("subscriber")

    @app.listen(channel)
    def on_news(data: Any) -> None:
        pass

    @app.listen(unique_name("pattern") + ":*")
    def on_pattern(data: Any) -> None:
        pass

    where.start(app)
    nobody = unique_name("nobody")
    counts = subscriber_counts([channel, nobody], where.url)
    assert counts == {channel: 1, nobody: 0}
    assert subscriber_counts([], where.url) == {}
    assert health_stats(where.url, [])["pattern_subscriptions"] >= 1


def test_a_killed_server_is_unhealthy(private_redis: RedisServer) -> None:
    url = private_redis.url
    assert ping(url) is True
    private_redis.kill()
    assert ping(url, timeout=1.0) is False
    stats = health_stats(url, timeout=1.0)
    assert stats["healthy"] is False
    assert stats["error"]
    with pytest.raises(TransportError, match="NUMSUB"):
        subscriber_counts(["x"], url, timeout=1.0)


@pytest.mark.timeout(30)
def test_a_hung_server_is_unhealthy_within_the_timeout(private_redis: RedisServer) -> None:
    url = private_redis.url
    assert health_stats(url)["healthy"] is True
    private_redis.pause()
    try:
        assert ping(url, timeout=0.5) is False
        stats = health_stats(url, timeout=0.5)
        assert stats["healthy"] is False
        assert "Timeout" in stats["error"] or "timed out" in stats["error"]
    finally:
        private_redis.resume()
    assert ping(url) is True


def test_nothing_listening_is_unhealthy() -> None:
    url = dead_url()
    assert ping(url) is False
    assert health_stats(url)["healthy"] is False


def test_a_bad_url_is_unhealthy_rather_than_an_exception() -> None:
    assert ping("redis://localhost:notaport/0") is False
    stats = health_stats(f"{dead_url()}?bogus_option=1")
    assert stats["healthy"] is False
    assert "bogus_option" in stats["error"]
