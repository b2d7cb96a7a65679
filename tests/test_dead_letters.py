"""Dead letters: listed with their error, replayed to their own group only, purged.

Each test runs on a real server and on the memory transport. The dead letters are made
the way a service makes them: a durable listener that raises on every try.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest

from _apps import Apps
from _helpers import QUIET, dead_url, unique_name, wait_for
from daebus import (
    Daebus,
    DeadLetters,
    TransportError,
    broadcast,
    dead_letter_queues,
    request,
)
from daebus.protocol import STREAM_GROUP_FIELD, dead_letter_key, stream_key

pytestmark = pytest.mark.timeout(60)

#: Fast retries: two tries, then the dead-letter stream.
FAILING = {"retries": 1, "backoff": 0.01}


def send(url: str, channel: str, payload: Any) -> str:
    """Send a durable message from outside any app, as a script would."""
    os.environ["DAEBUS_REDIS_URL"] = url
    try:
        message_id = broadcast.send(channel, payload, durable=True)
    finally:
        del os.environ["DAEBUS_REDIS_URL"]
    assert isinstance(message_id, str)
    return message_id


class Flaky:
    """A durable listener that raises while ``broken`` is set, and records what it ran."""

    def __init__(self, app: Daebus, channel: str, **options: Any) -> None:
        self.broken = threading.Event()
        self.broken.set()
        self.handled: list[tuple[Any, str | None]] = []
        self.tries = 0

        @app.listen(channel, durable=True, **FAILING, **options)
        def flaky(data: Any) -> None:
            self.tries += 1
            if self.broken.is_set():
                raise ValueError(f"cannot digest {data!r}")
            self.handled.append((data, request.message_id))


def dead_letters_of(where: Apps, channel: str, group: str, count: int) -> DeadLetters:
    """The group's dead letters, once ``count`` of them are there."""
    letters = DeadLetters(channel, group, redis_url=where.url)
    wait_for(lambda: letters.count() >= count, message=lambda: f"{letters.list()}")
    return letters


def test_list_shows_each_letter_with_its_error(where: Apps) -> None:
    channel = unique_name("orders")
    app = Daebus("poison")
    Flaky(app, channel)
    service = where.start(app)
    first = send(where.url, channel, {"order": 1})
    second = send(where.url, channel, {"order": 2})
    with dead_letters_of(where, channel, service, 2) as letters:
        listed = letters.list()
        assert sorted(letter.id for letter in listed) == [letter.id for letter in listed]
        assert {letter.message_id for letter in listed} == {first, second}
        (letter,) = [letter for letter in listed if letter.message_id == first]
        assert letter.channel == channel
        assert letter.group == service
        assert letter.data == {"order": 1}
        assert letter.raw == b'{"order":1}'
        assert letter.error == "ValueError: cannot digest {'order': 1}"
        assert letter.deliveries == 2
        assert letter.consumer == app.instance_id
        assert letter.age >= 0
        assert letter.time.timestamp() <= time.time() + 1
        assert letters.get(letter.id) == letter
        assert letters.list(limit=1) == listed[:1]
    found = {(q.channel, q.group) for q in dead_letter_queues(where.url)}
    assert (channel, service) in found


def test_replay_runs_the_message_in_its_failing_group_only(where: Apps) -> None:
    channel = unique_name("events")
    app = Daebus("two-groups")
    good: list[Any] = []

    @app.listen(channel, durable=True, group="good")
    def record(data: Any) -> None:
        good.append(data)

    flaky = Flaky(app, channel, group="flaky")
    where.start(app)
    send(where.url, channel, {"n": 1})
    letters = dead_letters_of(where, channel, "flaky", 1)
    wait_for(lambda: good == [{"n": 1}], message=lambda: f"good saw {good}")
    (letter,) = letters.list()

    flaky.broken.clear()
    replayed = letters.replay([letter.id])
    assert list(replayed) == [letter.id]
    wait_for(lambda: flaky.handled, message="the replayed message was not handled")
    assert flaky.handled == [({"n": 1}, replayed[letter.id])]
    assert letters.count() == 0
    time.sleep(QUIET)
    assert good == [{"n": 1}]  # the other group does not run it again
    assert len(flaky.handled) == 1
    letters.close()


def test_the_replayed_message_is_marked_for_its_group(where: Apps) -> None:
    channel = unique_name("marked")
    app = Daebus("marked")
    Flaky(app, channel)
    service = where.start(app)
    send(where.url, channel, [1, 2])
    with dead_letters_of(where, channel, service, 1) as letters:
        (letter,) = letters.list()
        new_id = letters.replay([letter.id])[letter.id]
        (entry,) = letters.admin.stream_range(stream_key(channel), new_id, new_id, 1)
    assert entry.fields == {"data": b"[1,2]", STREAM_GROUP_FIELD: service.encode()}


def test_replay_all_leaves_the_letters_that_fail_again(where: Apps) -> None:
    channel = unique_name("again")
    app = Daebus("again")
    flaky = Flaky(app, channel)
    service = where.start(app)
    for n in range(3):
        send(where.url, channel, n)
    with dead_letters_of(where, channel, service, 3) as letters:
        before = {letter.id for letter in letters.list()}
        replayed = letters.replay_all()
        assert set(replayed) == before
        # Still broken: each comes back as a new dead letter, and replay_all stopped.
        wait_for(lambda: letters.count() == 3, message=lambda: f"{letters.list()}")
        assert {letter.id for letter in letters.list()}.isdisjoint(before)
        assert flaky.tries == 12
        flaky.broken.clear()
        assert len(letters.replay_all()) == 3
        wait_for(lambda: len(flaky.handled) == 3, message=lambda: f"{flaky.handled}")
    assert sorted(data for data, _ in flaky.handled) == [0, 1, 2]


def test_replay_leaves_out_ids_that_are_not_there(where: Apps) -> None:
    channel = unique_name("missing")
    with DeadLetters(channel, "nobody", redis_url=where.url) as letters:
        assert letters.replay(["1-0"]) == {}
        assert letters.replay_all() == {}
        assert letters.get("1-0") is None
        with pytest.raises(ValueError, match="not a dead-letter id"):
            letters.replay(["oops"])
        with pytest.raises(ValueError, match="not a dead-letter id"):
            letters.purge(["1-0; FLUSHALL"])


def test_purge_deletes_the_named_letters_then_all(where: Apps) -> None:
    channel = unique_name("purged")
    app = Daebus("purged")
    Flaky(app, channel)
    service = where.start(app)
    for n in range(3):
        send(where.url, channel, n)
    with dead_letters_of(where, channel, service, 3) as letters:
        first, *rest = letters.list()
        assert letters.purge([first.id, first.id, "1-0"]) == 1
        assert letters.list() == rest
        assert letters.purge_all() == 2
        assert letters.count() == 0
        assert letters.list() == []
    found = {(q.channel, q.group) for q in dead_letter_queues(where.url)}
    assert (channel, service) not in found


def test_queues_are_found_for_channels_with_colons(where: Apps) -> None:
    # A group holds no ':', a channel may: the key splits at its last ':'.
    channel = unique_name("orders:eu")
    app = Daebus("colons")
    Flaky(app, channel, group="billing-v2")
    where.start(app)
    send(where.url, channel, 1)
    dead_letters_of(where, channel, "billing-v2", 1).close()
    queues = [q for q in dead_letter_queues(where.url) if q.channel == channel]
    assert [(q.channel, q.group, q.key) for q in queues] == [
        (channel, "billing-v2", dead_letter_key(channel, "billing-v2"))
    ]


def test_an_unreachable_server_is_a_transport_error() -> None:
    letters = DeadLetters("orders", "billing", redis_url=dead_url())
    with letters, pytest.raises(TransportError):
        letters.list()
