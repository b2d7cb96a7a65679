"""The blocking RESP connections that handler threads publish on and callers read from."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from _helpers import Subscription, unique_name
from daebus import TransportError
from daebus.transport import _resp_blocking
from daebus.transport._endpoint import Endpoint
from daebus.transport._resp import pack, pack_publish
from daebus.transport._resp_blocking import BlockingConnection, BlockingSubscriber


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    finally:
        stop.set()
        thread.join(5)
        for sock in accepted:
            sock.close()
        listener.close()


def test_a_server_that_never_answers_times_out(silent_server: str) -> None:
    connection = BlockingConnection(Endpoint.from_url(silent_server), timeout=0.3)
    started = time.monotonic()
    with pytest.raises(TransportError):
        connection.command(pack("PING"))
    assert time.monotonic() - started < 5


def test_replies_of_unanswered_sends_are_read_in_order(redis_url: str) -> None:
    connection = BlockingConnection(Endpoint.from_url(redis_url), timeout=5)
    key = unique_name("counter")
    try:
        for _ in range(_resp_blocking._MAX_UNREAD * 2 + 3):  # past the batch size, twice
            connection.send_only(pack("INCR", key))
        # The next command's reply is its own, not one owed to a send_only.
        assert (
            connection.command(pack("GET", key)) == str(_resp_blocking._MAX_UNREAD * 2 + 3).encode()
        )
    finally:
        connection.command(pack("DEL", key))
        connection.close()


def test_an_idle_connection_closed_by_a_restart_is_replaced(
    private_redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_resp_blocking, "_CHECK_AFTER_IDLE", 0.0)  # every use counts as idle
    connection = BlockingConnection(Endpoint.from_url(private_redis.url), timeout=5)
    connection.send_only(pack("PUBLISH", "c", "before"))
    assert connection.command(pack("PING")) == b"PONG"
    private_redis.restart()
    assert connection.command(pack("PUBLISH", "c", "after")) == 0
    connection.send_only(pack("PUBLISH", "c", "and again"))
    assert connection.command(pack("PING")) == b"PONG"
    connection.close()


def test_messages_sent_without_waiting_survive_a_quick_restart(
    private_redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Used moments ago, the connection is not checked before use: it meets the restart
    # only when a send fails or a read finds the connection closed.
    monkeypatch.setattr(_resp_blocking, "_CHECK_AFTER_IDLE", 3600.0)
    connection = BlockingConnection(Endpoint.from_url(private_redis.url), timeout=5)
    connection.send_only(pack_publish("replies", b"before"))
    assert connection.command(pack("PING")) == b"PONG"
    private_redis.kill()
    private_redis.start()
    with Subscription(private_redis.url, "replies") as spy:
        for n in range(5):
            connection.send_only(pack_publish("replies", b"after %d" % n))
        assert connection.command(pack("PING")) == b"PONG"
        assert [spy.get()[1] for _ in range(5)] == [b"after %d" % n for n in range(5)]
    connection.send_only(pack_publish("replies", b"later"))
    assert connection.command(pack("PING")) == b"PONG"
    connection.close()


def test_a_blocking_command_gives_up_at_its_own_timeout(private_redis: Any) -> None:
    connection = BlockingConnection(Endpoint.from_url(private_redis.url), timeout=30)
    assert connection.command(pack("PING")) == b"PONG"
    os.kill(private_redis.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(TransportError, match="no answer"):
            connection.command(pack("PING"), timeout=0.5)
        assert time.monotonic() - started < 5  # not the connection's 30 s
    finally:
        os.kill(private_redis.pid, signal.SIGCONT)
    assert connection.command(pack("PING"), timeout=5) == b"PONG"  # a new connection
    connection.close()


def test_a_blocking_subscriber_keeps_what_came_unread_and_times_out_quietly(
    redis_url: str,
) -> None:
    channel = unique_name("lane")
    subscriber = BlockingSubscriber(Endpoint.from_url(redis_url), channel, timeout=5)
    publisher = BlockingConnection(Endpoint.from_url(redis_url), timeout=5)
    try:
        subscriber.open()
        assert subscriber.next_message(0.05) is None  # a timeout, not a failure
        assert publisher.command(pack("PUBLISH", channel, "one")) == 1
        assert publisher.command(pack("PUBLISH", channel, "two")) == 1
        subscriber.open()  # still open: what came while nobody read stays
        assert subscriber.next_message(5) == b"one"
        assert subscriber.next_message(5) == b"two"
        assert subscriber.next_message(0.05) is None
    finally:
        subscriber.close()
        publisher.close()


def test_a_blocking_subscriber_subscribes_again_after_a_restart(private_redis: Any) -> None:
    channel = unique_name("lane")
    endpoint = Endpoint.from_url(private_redis.url)
    subscriber = BlockingSubscriber(endpoint, channel, timeout=5)
    publisher = BlockingConnection(endpoint, timeout=5)
    try:
        subscriber.open()
        private_redis.restart()
        subscriber.open()
        assert publisher.command(pack("PUBLISH", channel, "after")) == 1
        assert subscriber.next_message(5) == b"after"
        private_redis.stop()
        with pytest.raises(TransportError):
            subscriber.next_message(5)
    finally:
        subscriber.close()
        publisher.close()


def test_a_pipeline_gives_each_command_its_own_reply_or_error(redis_url: str) -> None:
    connection = BlockingConnection(Endpoint.from_url(redis_url), timeout=5)
    key = unique_name("piped")
    commands = [pack("SET", key, "x" * 100_000), pack("NO-SUCH-COMMAND"), pack("STRLEN", key)]
    try:
        # Long replies and an error in the middle: every reply is read, in order.
        replies = connection.pipeline([*commands, *([pack("GET", key)] * 50)])
        assert replies[0] == b"OK"
        assert isinstance(replies[1], TransportError)
        assert replies[2] == 100_000
        assert replies[3:] == [b"x" * 100_000] * 50
        assert connection.command(pack("PING")) == b"PONG"  # nothing left unread
    finally:
        connection.command(pack("DEL", key))
        connection.close()
