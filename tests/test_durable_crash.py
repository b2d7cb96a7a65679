"""Durable channels under crashes: instances SIGKILLed while messages flow.

Three instances of one service (subprocesses) consume a durable channel while the test
sends 10,000 messages steadily and SIGKILLs one instance every 2 seconds, starting a new
one in its place. The handler records each message it handles in Redis. What must hold:

- every message is handled, none lost;
- a message is handled more than once only if it was held by an instance at the moment
  that instance was killed (read from the group's pending list right after the kill, when
  nobody can have taken it yet), so duplicates are at most PREFETCH per kill;
- poison messages (the handler always raises on them) end in the group's dead-letter
  stream with their error, while the others flow; once the handler is fixed,
  ``daebus dlq replay`` brings them back and each is handled once.

A second test kills the instance that reads a keyed listener's group: each key's
messages stay in stream order.

The test prints the counts (messages, duplicates, kills) so that a run can be quoted:
``python -m pytest -s tests/test_durable_crash.py``.
"""

from __future__ import annotations

import collections
import itertools
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from _helpers import QUIET, ServiceProcess, unique_name, wait_for
from daebus import broadcast, protocol
from daebus.runtime.consumer import PREFETCH

pytestmark = [pytest.mark.timeout(180), pytest.mark.soak]

MESSAGES = 10_000
#: Messages sent per second: the run of sends lasts MESSAGES / RATE seconds.
RATE = 800
KILL_EVERY = 2.0
INSTANCES = 3
#: Every POISON_EVERY-th message makes the handler raise, every time.
POISON_EVERY = 200
#: The handlers' min_idle_time: a killed instance's messages are taken after this long.
MIN_IDLE_TIME = 2.0

SERVICE = textwrap.dedent(
    """
    import random, sys, time
    from daebus import Daebus, request

    channel, service, prefix, min_idle_time = sys.argv[1:5]
    app = Daebus("crash")

    @app.listen(channel, durable=True, min_idle_time=float(min_idle_time), retries=2, backoff=0.05)
    def handle(data):
        if data["poison"] and not app.cache.exists(prefix + ":cured"):
            app.cache.hincrby(prefix + ":poison-tries", data["n"], 1)
            raise ValueError(f"poison message {data['n']}")
        # A few ms of work, so that messages are in flight when the instance is killed.
        time.sleep(random.uniform(0.001, 0.005))
        pipe = app.cache.pipeline(transaction=False)
        pipe.hincrby(prefix + ":handled", data["n"], 1)
        pipe.hincrby(prefix + ":instances", app.instance_id, 1)
        if request.delivery_count > 1:
            pipe.rpush(prefix + ":redelivered", f"{data['n']} {request.delivery_count}")
        pipe.execute()

    app.run(service)
    """
)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _json_n(data: str) -> int:
    return int(json.loads(data)["n"])


def _consumer_of(client: redis.Redis, stream: str, group: str, pid: int) -> str | None:
    """The consumer name of the instance that ran as `pid` (its id is host:pid:random)."""
    for consumer in client.xinfo_consumers(stream, group):
        name = _text(consumer["name"])
        if f":{pid}:" in name:
            return name
    return None


def _held_by(client: redis.Redis, stream: str, group: str, consumer: str) -> set[str]:
    """The ids on the group's pending list that `consumer` holds."""
    rows = client.xpending_range(stream, group, "-", "+", 10 * PREFETCH, consumername=consumer)
    return {_text(row["message_id"]) for row in rows}


class Sender(threading.Thread):
    """Sends the messages at a steady rate, as a producer in another process would."""

    def __init__(self, channel: str) -> None:
        super().__init__(name="durable sender", daemon=True)
        self.channel = channel
        self.ids: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        started = time.monotonic()
        try:
            for n in range(MESSAGES):
                # Paced against the clock: sends that fell behind catch up at once.
                ahead = started + n / RATE - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                data = {"n": n, "poison": n % POISON_EVERY == 7}
                self.ids.append(broadcast.send(self.channel, data, durable=True))
        except BaseException as exc:
            self.error = exc


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_instances_killed_every_two_seconds_lose_nothing(
    service_processes: Callable[..., ServiceProcess],
    client: redis.Redis,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    channel, service, prefix = unique_name("crash"), unique_name("crashed"), unique_name("rec")
    stream, group = protocol.stream_key(channel), service
    dead = protocol.dead_letter_key(channel, group)
    monkeypatch.setenv("DAEBUS_REDIS_URL", redis_url)

    def start() -> ServiceProcess:
        return service_processes(SERVICE, channel, service, prefix, str(MIN_IDLE_TIME))

    instances = [start() for _ in range(INSTANCES)]
    for process in instances:
        process.wait_ready(protocol.service_channel(service), count=INSTANCES, timeout=30)
    # The group starts at "latest": it must exist before the first message is sent.
    wait_for(
        lambda: any(_text(g["name"]) == group for g in client.xinfo_groups(stream)),
        timeout=30,
        message="the group was never created",
    )

    sender = Sender(channel)
    sender.start()
    # Message id -> the kill at which it was held by the killed instance.
    in_flight: dict[str, int] = {}
    held_at_kill: list[int] = []
    kills = 0
    next_kill = time.monotonic() + KILL_EVERY
    while sender.is_alive():
        sender.join(timeout=max(0.0, next_kill - time.monotonic()))
        if not sender.is_alive():
            break
        slot = kills % INSTANCES
        victim = instances[slot]
        assert victim.is_running(), victim.output()
        assert victim.pid is not None
        pid = victim.pid
        victim.kill()
        kills += 1
        consumer = _consumer_of(client, stream, group, pid)
        held = _held_by(client, stream, group, consumer) if consumer else set()
        held_at_kill.append(len(held))
        for message_id in held:
            in_flight.setdefault(message_id, kills)
        instances[slot] = start()
        next_kill += KILL_EVERY
    sender.join()
    assert sender.error is None, f"sending failed: {sender.error!r}"
    assert len(sender.ids) == MESSAGES

    poison = {n for n in range(MESSAGES) if n % POISON_EVERY == 7}
    expected = set(range(MESSAGES)) - poison

    def handled() -> dict[int, int]:
        return {int(k): int(v) for k, v in client.hgetall(f"{prefix}:handled").items()}

    def dead_letters() -> list[dict[str, str]]:
        return [
            {_text(k): _text(v) for k, v in fields.items()} for _, fields in client.xrange(dead)
        ]

    def all_done() -> bool:
        got = handled()
        return (
            expected <= got.keys()
            and poison <= {_json_n(d["data"]) for d in dead_letters()}
            and client.xpending(stream, group)["pending"] == 0
        )

    def state() -> str:
        got = handled()
        missing = sorted(expected - got.keys())
        return (
            f"{len(missing)} not handled (first {missing[:20]}), "
            f"{len(dead_letters())} dead letters, "
            f"pending {client.xpending(stream, group)['pending']}\n"
            + "\n".join(p.output()[-3000:] for p in instances)
        )

    # Once the killed instances' messages have been idle for min_idle_time, the others
    # take them: well within this.
    wait_for(all_done, timeout=90, interval=0.2, message=state)

    counts = handled()
    assert counts.keys() == expected, "a poison message was recorded as handled"
    duplicated = {n: c - 1 for n, c in counts.items() if c > 1}
    duplicates = sum(duplicated.values())
    ids = sender.ids
    not_in_flight = sorted(n for n in duplicated if ids[n] not in in_flight)
    letters = dead_letters()
    dead_ns = collections.Counter(_json_n(d["data"]) for d in letters)
    tries = {int(k): int(v) for k, v in client.hgetall(f"{prefix}:poison-tries").items()}
    by_instance = {_text(k): int(v) for k, v in client.hgetall(f"{prefix}:instances").items()}
    print(
        f"\ndurable crash run: {MESSAGES} messages ({len(poison)} poison), {kills} kills "
        f"(SIGKILL every {KILL_EVERY} s, {INSTANCES} instances), held at each kill "
        f"{held_at_kill}; {duplicates} duplicate handlings over {len(duplicated)} messages "
        f"(bound PREFETCH x kills = {PREFETCH * kills}); {len(letters)} dead letters for "
        f"{len(dead_ns)} poison messages ({sum(tries.values())} tries); "
        f"{len(by_instance)} instances handled messages"
    )

    assert kills >= 3, f"only {kills} kills: the run was too short to test anything"
    assert all(held <= PREFETCH for held in held_at_kill), held_at_kill
    assert not not_in_flight, (
        f"handled twice though no killed instance held them: {not_in_flight[:20]}"
    )
    assert duplicates <= PREFETCH * kills
    # A message handled twice was handed out again: one of its runs saw a delivery count
    # above 1 (it was not read twice as new).
    redelivered = {int(_text(r).split()[0]) for r in client.lrange(f"{prefix}:redelivered", 0, -1)}
    assert set(duplicated) <= redelivered, sorted(set(duplicated) - redelivered)
    # Poison: each in the dead-letter stream (twice at most, if its instance died between
    # writing the dead letter and acknowledging it), with the handler's error, unless it
    # was handed out more often than its tries allow because instances holding it died.
    assert set(dead_ns) == poison, sorted(set(dead_ns) ^ poison)
    assert max(dead_ns.values()) <= 2, dead_ns.most_common(3)
    for letter in letters:
        n = _json_n(letter["data"])
        assert letter["id"] == ids[n]
        assert letter["channel"] == channel
        assert letter["group"] == group
        assert (
            f"ValueError: poison message {n}" in letter["error"]
            or "without being acknowledged" in letter["error"]
        ), letter
        if "without being acknowledged" in letter["error"]:
            assert ids[n] in in_flight, f"{n} handed out too often with no instance killed"
    # Tried retries + 1 times (3), more only if an instance died holding it.
    too_often = {n: t for n, t in tries.items() if t > 3 and ids[n] not in in_flight}
    assert not too_often, too_often

    # The handler is fixed; `daebus dlq replay` sends the poison messages back, and
    # each is handled once (twice if its dead letter was written twice).
    client.set(f"{prefix}:cured", 1)
    command = ["dlq", "replay", channel, "--group", group, "--all", "--redis-url", redis_url]
    replay = subprocess.run(
        [sys.executable, "-m", "daebus.cli", *command],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replay.returncode == 0, replay.stdout + replay.stderr

    def replayed_handled() -> bool:
        got = handled()
        return poison <= got.keys() and client.xpending(stream, group)["pending"] == 0

    wait_for(replayed_handled, timeout=30, interval=0.1, message=state)
    time.sleep(QUIET)
    after = handled()
    assert {n: after[n] for n in poison} == dict(dead_ns), "replayed messages handled"
    assert {n: c for n, c in after.items() if n not in poison} == counts
    assert client.xlen(dead) == 0
    print(f"replayed {sum(dead_ns.values())} dead letters with `daebus dlq replay`: handled once")


# -- order under kills --------------------------------------------------------------------

ORDERED_MESSAGES = 3_000
ORDERED_RATE = 400
KEYS = 4
ORDERED_SERVICE = textwrap.dedent(
    """
    import random, sys, time
    from daebus import Daebus, request

    channel, service, prefix, min_idle_time = sys.argv[1:5]
    app = Daebus("ordered")

    @app.listen(channel, durable=True, key="k", min_idle_time=float(min_idle_time))
    def apply(data):
        time.sleep(random.uniform(0.001, 0.003))
        app.cache.rpush(prefix + ":" + data["k"], data["n"])

    app.run(service)
    """
)


def test_keyed_order_survives_killing_the_reader(
    service_processes: Callable[..., ServiceProcess],
    client: redis.Redis,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A keyed listener on 3 instances; the one holding the group's turn is SIGKILLed
    every 2 s. Each key's messages are applied in stream order: a message may be
    applied again right after itself (it was in flight at a kill), never before an
    earlier one."""
    channel, service, prefix = unique_name("keyed"), unique_name("keyedsvc"), unique_name("rec")
    stream, group = protocol.stream_key(channel), service
    lease = protocol.order_lease_key(channel, group)
    monkeypatch.setenv("DAEBUS_REDIS_URL", redis_url)
    min_idle = "1.0"

    started: list[ServiceProcess] = []

    def start() -> ServiceProcess:
        started.append(service_processes(ORDERED_SERVICE, channel, service, prefix, min_idle))
        return started[-1]

    instances = [start() for _ in range(INSTANCES)]
    for process in instances:
        process.wait_ready(protocol.service_channel(service), count=INSTANCES, timeout=30)
    wait_for(
        lambda: any(_text(g["name"]) == group for g in client.xinfo_groups(stream)),
        timeout=30,
        message="the group was never created",
    )

    def send_all() -> None:
        started = time.monotonic()
        for n in range(ORDERED_MESSAGES):
            ahead = started + n / ORDERED_RATE - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            broadcast.send(channel, {"k": f"k{n % KEYS}", "n": n}, durable=True)

    sender = threading.Thread(target=send_all, daemon=True)
    sender.start()
    kills = 0
    in_flight: set[int] = set()
    next_kill = time.monotonic() + KILL_EVERY
    while sender.is_alive():
        sender.join(timeout=max(0.0, next_kill - time.monotonic()))
        if not sender.is_alive():
            break
        next_kill += KILL_EVERY
        holder = client.get(lease)
        if holder is None:
            continue  # between two holders: no reader to kill now
        slot = next((i for i, p in enumerate(instances) if f":{p.pid}:".encode() in holder), None)
        if slot is None:
            continue
        victim = instances[slot]
        pid = victim.pid
        assert pid is not None
        victim.kill()
        kills += 1
        consumer = _consumer_of(client, stream, group, pid)
        if consumer is not None:
            for message_id in _held_by(client, stream, group, consumer):
                for _, fields in client.xrange(stream, message_id, message_id):
                    in_flight.add(_json_n(_text(fields[b"data"])))
        instances[slot] = start()
    sender.join()

    def applied() -> dict[str, list[int]]:
        return {
            f"k{k}": [int(n) for n in client.lrange(f"{prefix}:k{k}", 0, -1)] for k in range(KEYS)
        }

    def all_applied() -> bool:
        return sum(len(set(v)) for v in applied().values()) == ORDERED_MESSAGES

    wait_for(
        all_applied,
        timeout=60,
        interval=0.2,
        message=lambda: (
            f"{sum(len(set(v)) for v in applied().values())} applied\n"
            + "\n".join(p.output()[-2000:] for p in instances)
        ),
    )
    wait_for(lambda: client.xpending(stream, group)["pending"] == 0, timeout=30)
    inversions, repeats, bad_repeats = 0, 0, []
    for key, numbers in applied().items():
        for before, after in itertools.pairwise(numbers):
            if after < before:
                inversions += 1
            elif after == before:
                repeats += 1
                if after not in in_flight:
                    bad_repeats.append((key, after))
        assert sorted(set(numbers)) == list(range(int(key[1:]), ORDERED_MESSAGES, KEYS))
    print(
        f"\nkeyed order under kills: {ORDERED_MESSAGES} messages over {KEYS} keys, {kills} "
        f"kills of the reader, {inversions} inversions, {repeats} messages applied again "
        f"right after themselves ({len(in_flight)} held at the kills)"
    )
    assert kills >= 2, f"only {kills} kills"
    assert inversions == 0, "\n".join(
        line for p in started for line in p.stderr().splitlines() if "WARNING" in line
    )
    assert not bad_repeats, bad_repeats
