"""Durable channels against hostile conditions.

What a hostile user, operator or producer does to a durable channel: restarts the
server mid-stream (with persistence on), deletes the stream or the group under running
consumers, sends messages that are not JSON or are huge, names channels and groups with
odd characters, writes handlers slower than ``min_idle_time`` or that kill their
instance, floods the channel with poison messages, and starts a group at ``earliest``
on a backlog. Each test says what must hold; none relies on timing beyond generous
deadlines for what must happen.
"""

from __future__ import annotations

import contextlib
import json
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from _apps import Apps
from _helpers import QUIET, ServiceProcess, unique_name, wait_for
from _servers import RedisServer
from daebus import Daebus, SetupError, broadcast, protocol, request
from daebus.exceptions import TransportError
from daebus.protocol import dead_letter_key, stream_key
from daebus.runtime.consumer import PREFETCH
from daebus.transport.memory import forget

pytestmark = pytest.mark.timeout(90)


class Seen:
    """What a durable listener of an in-process app handled: (data, delivery count)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[Any, int]] = []

    def add(self, data: Any) -> None:
        with self.lock:
            self.items.append((data, request.delivery_count or 0))

    def data(self) -> list[Any]:
        with self.lock:
            return [data for data, _ in self.items]

    def counts(self) -> Counter[Any]:
        return Counter(json.dumps(d, sort_keys=True) for d in self.data())


def _listen(app: Daebus, channel: str, seen: Seen, **options: Any) -> None:
    @app.listen(channel, durable=True, **options)
    def record(data: Any) -> None:
        seen.add(data)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _dead_letters(client: redis.Redis, key: str) -> list[dict[str, bytes]]:
    return [{_text(k): v for k, v in fields.items()} for _, fields in client.xrange(key)]


def _group_exists(client: redis.Redis, stream: str, group: str) -> bool:
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:  # no such key
        return False
    return any(_text(g["name"]) == group for g in groups)


def _pending(client: redis.Redis, stream: str, group: str) -> int:
    return int(client.xpending(stream, group)["pending"])


@pytest.fixture
def send(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str, Any], str]:
    """``send(url, channel, data)``: a durable send from outside any app, as a script's."""

    def send(url: str, channel: str, data: Any) -> str:
        monkeypatch.setenv("DAEBUS_REDIS_URL", url)
        message_id = broadcast.send(channel, data, durable=True)
        assert isinstance(message_id, str)
        return message_id

    return send


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


# -- the server restarts ------------------------------------------------------------------


@pytest.fixture
def persistent_redis(server_binary: Path) -> Iterator[RedisServer]:
    """A private server that writes every change to its append-only file first."""
    with RedisServer(server_binary, persistent=True) as server:
        yield server


def test_a_server_killed_mid_stream_keeps_the_group_position(
    persistent_redis: RedisServer, send: Callable[[str, str, Any], str]
) -> None:
    """Killed while a handler runs and restarted from its append-only file: nothing
    acknowledged before runs again, the message in flight is acknowledged after, and
    what is sent afterwards is handled."""
    url = persistent_redis.url
    channel, service = unique_name("persist"), unique_name("persisted")
    seen = Seen()
    release = threading.Event()
    app = Daebus("persisted")

    @app.listen(channel, durable=True, min_idle_time=60.0)
    def record(data: Any) -> None:
        if data == "in flight":
            release.wait(30)
        seen.add(data)

    client = redis.Redis.from_url(url)
    with Apps(url) as apps:
        apps.start(app, service)
        for n in range(100):
            send(url, channel, n)
        send(url, channel, "in flight")
        stream = stream_key(channel)
        wait_for(lambda: len(seen.data()) == 100, message=lambda: f"{len(seen.data())} seen")
        wait_for(lambda: _pending(client, stream, service) == 1, message="not all acknowledged")

        persistent_redis.kill()
        persistent_redis.start()
        release.set()  # the handler returns: its acknowledgement goes to the new server
        wait_for(lambda: _loaded(client), message="the server did not load its data")
        # A send on a connection the restart closed fails (it is not sent again: it may
        # have run); a producer sends it again.
        sent = [*range(100), "in flight"]
        with contextlib.suppress(TransportError):
            send(url, channel, "probe")
            sent.append("probe")
        sent += range(100, 200)
        for n in range(100, 200):
            send(url, channel, n)
        wait_for(
            lambda: len(seen.data()) >= len(sent),
            timeout=30,
            message=lambda: f"{len(seen.data())} seen\n{persistent_redis.read_log()[-2000:]}",
        )
        wait_for(lambda: _pending(client, stream, service) == 0, timeout=30, message="pending")
    client.close()
    counts = seen.counts()
    assert sorted(seen.data(), key=str) == sorted(sent, key=str), counts
    assert max(counts.values()) == 1, counts.most_common(3)


def test_messages_sent_while_service_and_server_were_down_are_handled(
    persistent_redis: RedisServer, send: Callable[[str, str, Any], str]
) -> None:
    """The group's position is on the server: a restart of both keeps it, so a group
    that starts at "latest" still gets what was sent while its service was down."""
    url = persistent_redis.url
    channel, service = unique_name("persist"), unique_name("persisted")
    first_seen, second_seen = Seen(), Seen()
    first = Daebus("first")
    _listen(first, channel, first_seen)
    with Apps(url) as apps:
        apps.start(first, service)
        send(url, channel, "before")
        wait_for(lambda: first_seen.data() == ["before"], message="first message not handled")
        first.stop()
        for n in range(20):
            send(url, channel, n)
        persistent_redis.kill()
        persistent_redis.start()
        time.sleep(QUIET)
        second = Daebus("second")
        _listen(second, channel, second_seen)
        apps.start(second, service)
        wait_for(
            lambda: len(second_seen.data()) >= 20,
            timeout=15,
            message=lambda: f"seen after the restart: {second_seen.data()}",
        )
        time.sleep(QUIET)
    assert sorted(second_seen.data()) == list(range(20))  # side by side: in no promised order


# -- the stream or the group deleted under running consumers ------------------------------


@pytest.mark.parametrize("deleted", ["stream", "group"])
def test_a_deleted_stream_or_group_is_made_again(
    deleted: str,
    apps: Apps,
    redis_url: str,
    client: redis.Redis,
    send: Callable[[str, str, Any], str],
) -> None:
    channel = unique_name("deleted")
    seen = Seen()
    app = Daebus("deleted")
    _listen(app, channel, seen)
    service = apps.start(app)
    stream = stream_key(channel)
    send(redis_url, channel, "before")
    wait_for(lambda: seen.data() == ["before"], message="not handled")
    if deleted == "stream":
        client.delete(stream)
    else:
        client.xgroup_destroy(stream, service)
    assert not _group_exists(client, stream, service)
    # The group starts at "latest" when it is made again: what is sent before that is
    # not its own, so wait for it (the consumer notices at its next read).
    wait_for(
        lambda: _group_exists(client, stream, service),
        timeout=20,
        message="the group was not made again",
    )
    for n in range(10):
        send(redis_url, channel, n)
    wait_for(lambda: len(seen.data()) >= 11, timeout=20, message=lambda: f"{seen.data()}")
    # Side by side in the workers: in no promised order.
    assert seen.data()[0] == "before"
    assert sorted(seen.data()[1:]) == list(range(10))


# -- what producers put in the stream -----------------------------------------------------


def test_entries_that_are_not_json_are_dead_lettered_and_the_rest_flow(
    apps: Apps, redis_url: str, client: redis.Redis, send: Callable[[str, str, Any], str]
) -> None:
    channel = unique_name("garbage")
    seen = Seen()
    app = Daebus("garbage")
    _listen(app, channel, seen)
    service = apps.start(app)
    stream = stream_key(channel)
    bad = [
        {"data": b"{not json"},
        {"data": b"\xff\xfe\x00 binary"},
        {"payload": b'{"no": "data field"}'},
        {"data": b""},
    ]
    bad_ids = [_text(client.xadd(stream, fields)) for fields in bad]  # type: ignore[arg-type]
    send(redis_url, channel, {"good": 1})
    dead = dead_letter_key(channel, service)
    wait_for(
        lambda: len(_dead_letters(client, dead)) == len(bad) and seen.data(),
        message=lambda: f"{_dead_letters(client, dead)} {seen.data()}",
    )
    assert seen.data() == [{"good": 1}]
    letters = _dead_letters(client, dead)
    assert [_text(letter["id"]) for letter in letters] == bad_ids
    for letter, fields in zip(letters, bad, strict=True):
        assert b"not a JSON message" in letter["error"]
        for name, value in fields.items():
            assert letter[name] == value  # the entry is kept as it was sent
    # Acknowledged just after the handler returns, with the others of its loop turn.
    wait_for(lambda: _pending(client, stream, service) == 0, message="left pending")


def test_huge_messages_are_handled_whole(
    apps: Apps, redis_url: str, client: redis.Redis, send: Callable[[str, str, Any], str]
) -> None:
    """Messages of several MB each, more than one read takes at once: all handled whole,
    and a huge poison message reaches the dead-letter stream whole."""
    channel = unique_name("huge")
    seen = Seen()
    app = Daebus("huge")

    @app.listen(channel, durable=True, retries=0)
    def record(data: Any) -> None:
        if data.get("poison"):
            raise ValueError("too big to digest")
        seen.add({"n": data["n"], "size": len(data["blob"]), "ok": set(data["blob"]) == {"x"}})

    service = apps.start(app)
    size = 3 * 1024 * 1024
    count = PREFETCH + 4
    for n in range(count):
        send(redis_url, channel, {"n": n, "blob": "x" * size})
    send(redis_url, channel, {"n": -1, "blob": "y" * size, "poison": True})
    dead = dead_letter_key(channel, service)
    wait_for(
        lambda: len(seen.data()) >= count and client.xlen(dead) >= 1,
        timeout=60,
        message=lambda: f"{len(seen.data())} handled, {client.xlen(dead)} dead letters",
    )
    assert sorted(s["n"] for s in seen.data()) == list(range(count))
    assert all(s["size"] == size and s["ok"] for s in seen.data())
    (letter,) = _dead_letters(client, dead)
    assert json.loads(letter["data"]) == {"n": -1, "blob": "y" * size, "poison": True}
    assert b"too big to digest" in letter["error"]


# -- names --------------------------------------------------------------------------------

ODD_CHANNEL = 'orders/été 2026 #1:eu {x} "q" \\ \u2603'
ODD_GROUP = "billing team \u2713 {y} #1"


@pytest.mark.parametrize("url_kind", ["redis", "memory"])
def test_odd_channel_and_group_names(url_kind: str, redis_url: str) -> None:
    url = redis_url if url_kind == "redis" else f"memory://{unique_name('odd')}"
    channel = f"{ODD_CHANNEL} {unique_name('c')}"
    seen = Seen()
    app = Daebus("odd")

    @app.listen(channel, durable=True, group=ODD_GROUP, retries=0)
    def record(data: Any, actual: str) -> None:
        if data == "poison":
            raise ValueError("odd poison")
        seen.add([data, actual])

    try:
        with Apps(url) as apps:
            apps.start(app)
            broadcast_via(app, channel, "poison")
            for n in range(5):
                message_id = broadcast_via(app, channel, n)
                assert message_id
            wait_for(lambda: len(seen.data()) == 5, message=lambda: f"{seen.data()}")
            assert sorted(seen.data()) == [[n, channel] for n in range(5)]
            if url_kind == "redis":
                client = redis.Redis.from_url(url)
                dead = dead_letter_key(channel, ODD_GROUP)
                letters = wait_for(lambda: _dead_letters(client, dead), message="no dead letter")
                client.close()
                assert letters[0]["channel"].decode() == channel
                assert letters[0]["group"].decode() == ODD_GROUP
                assert b"odd poison" in letters[0]["error"]
    finally:
        if url_kind == "memory":
            forget(url)


def _loaded(client: redis.Redis) -> bool:
    """Whether a restarted server has loaded its data and answers commands."""
    try:
        client.ping()
    except redis.RedisError:
        return False
    return True


def broadcast_via(app: Daebus, channel: str, data: Any) -> str:
    """A durable send through a running app, from the test's thread (not the app's loop)."""
    result = app.broadcast.send(channel, data, durable=True)
    assert isinstance(result, str)
    return result


def test_a_group_name_with_a_colon_is_refused() -> None:
    """Keys end with ':<group>': ('a:b', 'c') and ('a', 'b:c') would share a dead-letter
    stream, so a group cannot hold ':' (nor, for its default group, the service's name)."""
    app = Daebus("one")
    with pytest.raises(SetupError, match="':'"):
        app.add_listener("a", print, durable=True, group="b:c")
    with pytest.raises(ValueError, match="':'"):
        dead_letter_key("a", "b:c")


def test_a_service_named_with_a_colon_needs_a_group(apps: Apps) -> None:
    app = Daebus("colon")
    app.add_listener(unique_name("ch"), print, durable=True)
    with pytest.raises(SetupError, match="group="):
        apps.start(app, unique_name("has:colon"))


# -- handlers that are slow, that fail, or that kill their instance -----------------------

RECORDING_SERVICE = textwrap.dedent(
    """
    import os, signal, sys, time
    from daebus import Daebus, request

    channel, service, prefix, min_idle_time, took = sys.argv[1:6]
    app = Daebus("recording")

    @app.listen(channel, durable=True, min_idle_time=float(min_idle_time), retries=1,
                backoff=0.05)
    def handle(data):
        if data == "kill":
            app.cache.incr(prefix + ":kills")
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(float(took))
        pipe = app.cache.pipeline(transaction=False)
        pipe.hincrby(prefix + ":handled", str(data), 1)
        pipe.hincrby(prefix + ":deliveries", str(data), request.delivery_count)
        pipe.execute()

    app.run(service)
    """
)


def _handled(client: redis.Redis, prefix: str) -> dict[str, int]:
    return {_text(k): int(v) for k, v in client.hgetall(f"{prefix}:handled").items()}


def test_handlers_slower_than_min_idle_time_keep_their_messages(
    service_processes: Callable[..., ServiceProcess],
    client: redis.Redis,
    redis_url: str,
    send: Callable[[str, str, Any], str],
) -> None:
    """Two instances, messages that take 2.5 s against a min_idle_time of 1 s, and more
    of them than an instance has workers (some wait their turn while held): each is
    handled once, by the instance that took it."""
    channel, service, prefix = unique_name("slow"), unique_name("slowsvc"), unique_name("rec")
    processes = [
        service_processes(RECORDING_SERVICE, channel, service, prefix, "1.0", "2.5")
        for _ in range(2)
    ]
    for process in processes:
        process.wait_ready(protocol.service_channel(service), count=2, timeout=30)
    wait_for(lambda: _group_exists(client, stream_key(channel), service), timeout=30)
    total = 2 * PREFETCH
    for n in range(total):
        send(redis_url, channel, n)
    wait_for(
        lambda: len(_handled(client, prefix)) == total,
        timeout=60,
        interval=0.1,
        message=lambda: f"{_handled(client, prefix)}\n" + processes[0].output(),
    )
    time.sleep(1.0)  # a message taken twice would be recorded by now
    handled = _handled(client, prefix)
    deliveries = {_text(k): int(v) for k, v in client.hgetall(f"{prefix}:deliveries").items()}
    assert handled == {str(n): 1 for n in range(total)}
    assert deliveries == {str(n): 1 for n in range(total)}, "a message was handed out again"


def test_an_instance_stopped_gracefully_finishes_or_leaves_what_it_holds(
    service_processes: Callable[..., ServiceProcess],
    client: redis.Redis,
    redis_url: str,
    send: Callable[[str, str, Any], str],
) -> None:
    """SIGTERM while an instance holds messages (some running, some waiting for a
    worker): those it runs are acknowledged before it exits, the others are left to the
    other instance; each message is handled once."""
    channel, service, prefix = unique_name("graceful"), unique_name("stopped"), unique_name("rec")
    processes = [
        service_processes(RECORDING_SERVICE, channel, service, prefix, "1.0", "0.5")
        for _ in range(2)
    ]
    for process in processes:
        process.wait_ready(protocol.service_channel(service), count=2, timeout=30)
    wait_for(lambda: _group_exists(client, stream_key(channel), service), timeout=30)
    stream = stream_key(channel)
    victim, survivor = processes
    assert victim.pid is not None
    total = 3 * PREFETCH
    for n in range(total):
        send(redis_url, channel, n)
    wait_for(
        lambda: _consumer_holds(client, stream, service, victim.pid) > 0,
        message="the instance to stop never held a message",
    )
    assert victim.terminate() == 0, victim.output()
    wait_for(
        lambda: len(_handled(client, prefix)) == total,
        timeout=60,
        interval=0.1,
        message=lambda: f"{_handled(client, prefix)}\n{survivor.output()}",
    )
    time.sleep(QUIET)
    assert _handled(client, prefix) == {str(n): 1 for n in range(total)}
    assert _pending(client, stream, service) == 0
    assert survivor.is_running()


def _consumer_holds(client: redis.Redis, stream: str, group: str, pid: int | None) -> int:
    for consumer in client.xinfo_consumers(stream, group):
        if f":{pid}:" in _text(consumer["name"]):
            return int(consumer["pending"])
    return 0


def _wait_dead_letter_or_death(client: redis.Redis, dead: str, process: ServiceProcess) -> None:
    wait_for(lambda: client.xlen(dead) or not process.is_running(), timeout=30)


def test_a_message_that_kills_its_instance_ends_in_the_dead_letter_stream(
    service_processes: Callable[..., ServiceProcess],
    client: redis.Redis,
    redis_url: str,
    send: Callable[[str, str, Any], str],
) -> None:
    """It runs retries + 1 times (2), killing each instance that takes it; the next
    instance moves it to the dead-letter stream without running it, and goes on."""
    channel, service, prefix = unique_name("killer"), unique_name("victims"), unique_name("rec")

    def start() -> ServiceProcess:
        process = service_processes(RECORDING_SERVICE, channel, service, prefix, "0.5", "0")
        process.wait_ready(protocol.service_channel(service), timeout=30)
        return process

    process = start()
    wait_for(lambda: _group_exists(client, stream_key(channel), service), timeout=30)
    killer_id = send(redis_url, channel, "kill")
    dead = dead_letter_key(channel, service)
    restarts = 0
    while not client.xlen(dead):
        assert restarts <= 5, f"still not a dead letter after {restarts} restarts"
        if not process.is_running():
            restarts += 1
            process = start()
        _wait_dead_letter_or_death(client, dead, process)
    send(redis_url, channel, "after")
    wait_for(lambda: "after" in _handled(client, prefix), message=process.output)
    (letter,) = _dead_letters(client, dead)
    assert _text(letter["id"]) == killer_id
    assert b"without being acknowledged" in letter["error"], letter["error"]
    assert int(client.get(f"{prefix}:kills") or 0) == 2
    assert restarts == 2
    assert process.is_running()
    wait_for(lambda: _pending(client, stream_key(channel), service) == 0, message="left pending")


def test_a_flood_of_poison_messages_does_not_hold_up_the_others(
    apps: Apps, redis_url: str, client: redis.Redis, send: Callable[[str, str, Any], str]
) -> None:
    """More poison messages than an instance holds at once, all waiting for their next
    try (a long backoff): the good messages sent after them are handled meanwhile."""
    channel = unique_name("flood")
    seen = Seen()
    tries: list[Any] = []
    app = Daebus("flood")

    @app.listen(channel, durable=True, retries=1, backoff=60.0)
    def record(data: Any) -> None:
        if data.get("poison"):
            tries.append(data["n"])
            raise ValueError("poison")
        seen.add(data["n"])

    service = apps.start(app)
    for n in range(PREFETCH + 4):
        send(redis_url, channel, {"n": n, "poison": True})
    for n in range(20):
        send(redis_url, channel, {"n": n, "poison": False})
    wait_for(
        lambda: len(seen.data()) == 20,
        timeout=10,  # the poison messages' next try is 30 s away at the earliest
        message=lambda: f"{len(seen.data())} of 20 good messages handled while the poison waits",
    )
    assert client.xlen(dead_letter_key(channel, service)) == 0


# -- start positions ----------------------------------------------------------------------


def test_earliest_gets_a_backlog_once_and_a_restart_does_not_replay_it(where: Apps) -> None:
    channel, service = unique_name("backlog"), unique_name("late")
    sender = Daebus("sender")
    where.start(sender)
    backlog = 10 * PREFETCH + 3
    for n in range(backlog):
        broadcast_via(sender, channel, n)
    first_seen = Seen()
    first = Daebus("first")
    _listen(first, channel, first_seen, start="earliest")
    where.start(first, service)
    wait_for(lambda: len(first_seen.data()) >= backlog, timeout=30, message="backlog not handled")
    first.stop()
    assert sorted(first_seen.data()) == list(range(backlog))
    for n in range(backlog, backlog + 3):
        broadcast_via(sender, channel, n)
    second_seen = Seen()
    second = Daebus("second")
    _listen(second, channel, second_seen, start="earliest")
    where.start(second, service)
    wait_for(lambda: len(second_seen.data()) >= 3, message=lambda: f"{second_seen.data()}")
    time.sleep(QUIET)
    # The group exists: its position is kept, "earliest" is for a new group only.
    assert sorted(second_seen.data()) == list(range(backlog, backlog + 3))


def test_start_at_an_id_gets_what_follows_it(where: Apps) -> None:
    channel = unique_name("from-id")
    sender = Daebus("sender")
    where.start(sender)
    ids = [broadcast_via(sender, channel, n) for n in range(10)]
    seen = Seen()
    app = Daebus("from-id")
    _listen(app, channel, seen, start=ids[4])
    where.start(app)
    wait_for(lambda: len(seen.data()) >= 5, message=lambda: f"{seen.data()}")
    time.sleep(QUIET)
    assert sorted(seen.data()) == list(range(5, 10))


def test_an_ordered_reader_catching_up_counts_each_delivery_once(
    private_apps: Apps, private_redis: RedisServer
) -> None:
    """A member of the group died holding 20 messages; an ordered listener takes the
    turn and catches up. A message that fails once is tried again and handled, and the
    catching up does not spin (a handful of XAUTOCLAIMs, not hundreds)."""
    url = private_redis.url
    client = redis.Redis.from_url(url)
    channel, service = unique_name("catch-up"), unique_name("ordered")
    stream = stream_key(channel)
    client.xgroup_create(stream, service, "$", mkstream=True)
    for n in range(PREFETCH + 4):
        client.xadd(stream, {"data": json.dumps(n)})
    client.xreadgroup(service, "a-member-that-died", {stream: ">"})  # and never acks
    seen = Seen()
    failed: list[int] = []
    app = Daebus("ordered")

    @app.listen(channel, durable=True, ordered=True, min_idle_time=1.0, backoff=0.2)
    def apply(data: int) -> None:
        if data == 1 and not failed:
            failed.append(request.delivery_count or 0)
            time.sleep(0.5)
            raise ValueError("not yet")
        seen.add(data)

    private_apps.start(app, service)
    dead = dead_letter_key(channel, service)
    wait_for(
        lambda: len(seen.data()) + client.xlen(dead) >= PREFETCH + 4,
        timeout=30,
        message=lambda: f"{seen.data()}",
    )
    autoclaims = client.info("commandstats").get("cmdstat_xautoclaim", {}).get("calls", 0)
    letters = _dead_letters(client, dead)
    client.close()
    assert not letters, letters[0]["error"]
    assert seen.data() == list(range(PREFETCH + 4))
    assert autoclaims < 50, f"{autoclaims} XAUTOCLAIM calls to catch up 20 messages"
