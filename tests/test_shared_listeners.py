"""Shared listeners: the instances of a service share a channel's broadcasts."""

from __future__ import annotations

import collections
import json
import textwrap
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import redis

from _apps import Apps
from _helpers import QUIET, ServiceProcess, unique_name, wait_for
from daebus import Daebus, SetupError, protocol
from daebus.transport.memory import broker_for

pytestmark = pytest.mark.timeout(120)


class Heard:
    """Apps of one service whose listeners record which instance handled what."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, str]] = []  # (instance, listener, message)
        self._lock = threading.Lock()

    def app(self, channel: str, *, shared: bool = True, names: Iterable[str] = ("one",)) -> Daebus:
        app = Daebus("shared-listen")
        for name in names:
            app.add_listener(channel, self._listener(app, name), shared=shared and name != "every")
        return app

    def _listener(self, app: Daebus, name: str) -> Callable[[Any], None]:
        def listener(data: Any) -> None:
            assert app.instance_id is not None
            text = json.dumps(data, sort_keys=True)
            with self._lock:
                self.records.append((app.instance_id, name, text))

        # Named alike on every instance (module and qualified name): that is how the
        # instances tell one shared listener from another.
        listener.__qualname__ = f"Heard.{name}"
        return listener

    def count(self) -> int:
        with self._lock:
            return len(self.records)

    def messages(self, name: str = "one") -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(text for _, n, text in self.records if n == name)

    def per_instance(self, name: str = "one") -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(who for who, n, _ in self.records if n == name)


def runtime_of(app: Daebus) -> Any:
    runtime = app._runtime
    assert runtime is not None
    return runtime


def ready(apps: list[Daebus], channel: str) -> None:
    """Wait until each instance knows the others and numbers ``channel`` as they do."""

    def all_ready() -> bool:
        return all(
            app._runtime is not None
            and len(app._runtime.instances.others) == len(apps) - 1
            and app._runtime.broadcasts.shared.in_step(channel)
            for app in apps
        )

    wait_for(all_ready, timeout=15, message="the instances are not in step")


def start_instances(
    apps: Apps, heard: Heard, channel: str, count: int, **options: Any
) -> tuple[str, list[Daebus]]:
    service = unique_name("shared-listen")
    started = [heard.app(channel, **options) for _ in range(count)]
    for app in started:
        apps.start(app, service)
    ready(started, channel)
    return service, started


def heartbeats_and_events(count: int) -> list[bytes]:
    """Runs of identical heartbeats between distinct events: identical ones are not merged."""
    messages = []
    for n in range(count):
        if n % 10 < 4:  # four identical heartbeats in a row, every ten messages
            messages.append(json.dumps({"status": "ok"}).encode())
        else:
            messages.append(json.dumps({"n": n}).encode())
    return messages


def publish_all(client: redis.Redis, channel: str, messages: list[bytes]) -> None:
    with client.pipeline(transaction=False) as pipe:
        for message in messages:
            pipe.publish(channel, message)
        pipe.execute()


def publish_paced(
    client: redis.Redis | Callable[[list[bytes]], None],
    channel: str,
    messages: list[bytes],
    heard: Heard,
    per_message: int = 1,
) -> None:
    """Publish in bursts of 50, each once the last is handled (``per_message`` times each).

    In-process instances share one interpreter: a burst of hundreds can hold one
    instance's loop back long enough for the others to win its whole share of it.
    ``client`` is a Redis client, or a function that publishes a burst on ``channel``.
    """
    start = heard.count()
    for first in range(0, len(messages), 50):
        burst = messages[first : first + 50]
        if isinstance(client, redis.Redis):
            publish_all(client, channel, burst)
        else:
            client(burst)
        settled(heard, start + (first + len(burst)) * per_message, quiet=False)


def expected(messages: list[bytes], times: int = 1) -> collections.Counter[str]:
    """Each message as the listeners record it, ``times`` times over."""
    counted = collections.Counter(json.dumps(json.loads(m), sort_keys=True) for m in messages)
    return collections.Counter({text: n * times for text, n in counted.items()})


def settled(heard: Heard, total: int, *, quiet: bool = True) -> None:
    """Wait for ``total`` handlings, then (``quiet``) a moment more for any extra one."""
    wait_for(lambda: heard.count() >= total, timeout=30, message=lambda: f"{heard.count()}")
    if quiet:
        time.sleep(QUIET)


# -- sharing ------------------------------------------------------------------------------


def test_three_instances_handle_each_broadcast_once(apps: Apps, redis_client: redis.Redis) -> None:
    heard, channel = Heard(), unique_name("readings")
    _service, started = start_instances(apps, heard, channel, 3)
    messages = heartbeats_and_events(600)
    publish_paced(redis_client, channel, messages, heard)
    settled(heard, 600)

    assert heard.messages() == expected(messages)  # 240 identical heartbeats included
    shares = heard.per_instance()
    assert set(shares) == {app.instance_id for app in started}
    assert min(shares.values()) >= 120, shares


def test_without_shared_every_instance_handles_every_broadcast(
    apps: Apps, redis_client: redis.Redis
) -> None:
    heard, channel = Heard(), unique_name("readings")
    service = unique_name("shared-listen")
    started = [heard.app(channel, shared=False) for _ in range(3)]
    for app in started:
        apps.start(app, service)
    wait_for(lambda: all(len(runtime_of(app).instances.others) == 2 for app in started))
    messages = heartbeats_and_events(300)
    publish_all(redis_client, channel, messages)
    settled(heard, 900)

    assert heard.messages() == expected(messages, times=3)
    assert set(heard.per_instance().values()) == {300}


def test_two_shared_listeners_on_one_channel_each_handle_each_message_once(
    apps: Apps, redis_client: redis.Redis
) -> None:
    # Beside them, a listener that is not shared handles every message on every instance.
    heard, channel = Heard(), unique_name("readings")
    start_instances(apps, heard, channel, 3, names=("first", "second", "every"))
    messages = heartbeats_and_events(300)
    publish_paced(redis_client, channel, messages, heard, per_message=5)
    settled(heard, 300 * 2 + 900)

    assert heard.messages("first") == expected(messages)
    assert heard.messages("second") == expected(messages)
    assert heard.messages("every") == expected(messages, times=3)
    assert len(heard.per_instance("first")) == 3
    assert len(heard.per_instance("second")) == 3


def test_a_shared_pattern_listener(apps: Apps, redis_client: redis.Redis) -> None:
    heard, prefix = Heard(), unique_name("sensors")
    pattern = f"{prefix}:*"
    start_instances(apps, heard, pattern, 2)
    messages = heartbeats_and_events(200)
    for first in range(0, 200, 50):  # paced, as publish_paced does
        with redis_client.pipeline(transaction=False) as pipe:
            for n in range(first, first + 50):
                pipe.publish(f"{prefix}:{n % 3}", messages[n])
            pipe.execute()
        settled(heard, first + 50, quiet=False)
    settled(heard, 200)

    assert heard.messages() == expected(messages)
    assert len(heard.per_instance()) == 2


def test_a_lone_instance_handles_all_and_claims_nothing(
    private_apps: Apps, private_redis: Any
) -> None:
    heard, channel = Heard(), unique_name("readings")
    app = heard.app(channel)
    private_apps.start(app)
    wait_for(lambda: runtime_of(app).broadcasts.shared.in_step(channel))
    client = redis.Redis.from_url(private_redis.url)
    try:

        def sets() -> int:
            return int(client.info("commandstats").get("cmdstat_set", {}).get("calls", 0))

        before = sets()
        messages = heartbeats_and_events(300)
        publish_all(client, channel, messages)
        settled(heard, 300)
        assert heard.messages() == expected(messages)
        assert sets() == before
        assert not client.keys("daebus:claim:*")
    finally:
        client.close()


def test_ordered_and_shared_is_refused() -> None:
    app = Daebus("refused")
    with pytest.raises(SetupError, match="durable=True"):
        app.add_listener("events", print, ordered=True, shared=True)
    assert app.listeners("events") == []


# -- instances that come, go and reconnect while messages flow ---------------------------


class Flow:
    """Numbered broadcasts published in a thread until stopped; with ``beats``, each ten
    are followed by ten identical heartbeats."""

    BEAT = json.dumps({"beat": True}, sort_keys=True)

    def __init__(self, client: redis.Redis, channel: str, beats: bool = False) -> None:
        self.sent = 0
        self.beats = 0
        self._with_beats = beats
        self._client, self._channel = client, channel
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._client.pipeline(transaction=False) as pipe:
                for n in range(self.sent, self.sent + 10):
                    pipe.publish(self._channel, json.dumps({"n": n}))
                for _ in range(10 if self._with_beats else 0):
                    pipe.publish(self._channel, self.BEAT)
                pipe.execute()
            self.sent += 10
            self.beats += 10 if self._with_beats else 0
            time.sleep(0.005)

    def __enter__(self) -> Flow:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(20)


def numbers(heard: Heard) -> collections.Counter[int]:
    return collections.Counter(
        {json.loads(text)["n"]: times for text, times in heard.messages().items() if "n" in text}
    )


def test_an_instance_stopped_mid_stream_hands_over_and_loses_nothing(
    apps: Apps, redis_client: redis.Redis
) -> None:
    heard, channel = Heard(), unique_name("readings")
    _service, (first, second, third) = start_instances(apps, heard, channel, 3)
    with Flow(redis_client, channel) as flow:
        wait_for(lambda: heard.per_instance()[third.instance_id] >= 50, timeout=30)
        third.stop()
        stopped_at = flow.sent
        wait_for(lambda: heard.count() >= stopped_at + 300, timeout=30)
    settled(heard, flow.sent)

    handled = numbers(heard)
    assert sorted(handled) == list(range(flow.sent))  # none lost, after the stop too
    assert set(handled.values()) == {1}, "some were handled twice"
    shares = heard.per_instance()
    assert shares[third.instance_id] >= 50
    # Long after its departure, the other two handle everything.
    late = collections.Counter(
        who for who, _, text in heard.records if json.loads(text)["n"] > stopped_at + 100
    )
    assert set(late) == {first.instance_id, second.instance_id}, late


def test_an_instance_joining_mid_stream_loses_nothing(
    apps: Apps, redis_client: redis.Redis
) -> None:
    # Its count starts at its own marker; until then it handles every message unclaimed:
    # a message may be handled twice then, never by none.
    heard, channel = Heard(), unique_name("readings")
    service, started = start_instances(apps, heard, channel, 2)
    with Flow(redis_client, channel) as flow:
        wait_for(lambda: heard.count() >= 200, timeout=30)
        late = heard.app(channel)
        apps.start(late, service)
        ready([*started, late], channel)
        joined_at = flow.sent
        wait_for(lambda: heard.count() >= joined_at + 300, timeout=30)
    settled(heard, flow.sent)

    handled = numbers(heard)
    assert sorted(set(handled)) == list(range(flow.sent))
    twice = [n for n, times in handled.items() if times > 1]
    assert all(n < joined_at for n in twice), "handled twice once in step"
    assert heard.per_instance()[late.instance_id] >= 30


def test_an_instance_that_reconnects_loses_nothing(apps: Apps, redis_client: redis.Redis) -> None:
    # It misses what is published while it reconnects: until its marker comes back, its
    # count of the identical heartbeats is off, and claims made with it would take
    # other heartbeats' keys.
    heard, channel = Heard(), unique_name("readings")
    _service, started = start_instances(apps, heard, channel, 3)
    cut = started[0]
    runtime = runtime_of(cut)
    disconnects = runtime.instances.disconnects
    with Flow(redis_client, channel, beats=True) as flow:
        wait_for(lambda: heard.count() >= 400, timeout=30)
        runtime.loop.call_soon_threadsafe(runtime.transport._subscriber.close)
        wait_for(lambda: runtime.instances.disconnects > disconnects, timeout=15)
        ready(started, channel)
        back_at = flow.sent
        wait_for(lambda: heard.count() >= 2 * back_at + 600, timeout=30)
    settled(heard, flow.sent + flow.beats)

    handled = numbers(heard)
    assert sorted(handled) == list(range(flow.sent))
    assert heard.messages()[Flow.BEAT] >= flow.beats
    twice = [n for n, times in handled.items() if times > 1]
    assert all(n < back_at for n in twice), "handled twice once in step"
    after = [who for who, _, text in heard.records if json.loads(text).get("n", 0) > back_at]
    assert cut.instance_id in after


# -- subprocesses, and memory:// ----------------------------------------------------------

SERVICE = textwrap.dedent(
    """
    import sys
    from daebus import Daebus
    from daebus.runtime import instances

    instances.RENEW_EVERY, instances.EXPIRY_MS = 0.5, 2_000

    app = Daebus("shared-listen")

    @app.listen(sys.argv[2], shared=True)
    def heard(data):
        app.cache.hincrby(sys.argv[3], app.instance_id, 1)
        app.cache.hincrby(sys.argv[3] + ":messages", str(sorted(data.items())), 1)

    app.run(sys.argv[1])
    """
)


def test_subprocess_instances_share_a_channel(
    redis_client: redis.Redis, service_processes: Callable[..., ServiceProcess]
) -> None:
    service, channel, runs = unique_name("shared"), unique_name("readings"), unique_name("runs")
    one = service_processes(SERVICE, service, channel, runs)
    two = service_processes(SERVICE, service, channel, runs)
    one.wait_ready(service)
    two.wait_ready(service, count=2)
    wait_for(lambda: redis_client.zcard(protocol.instances_key(service)) == 2)
    # Both in step: a probe handled once, after each has read the other's marker.
    probe = 0

    def probed_once() -> bool:
        nonlocal probe
        probe += 1
        redis_client.delete(runs, runs + ":messages")
        publish_all(redis_client, channel, [json.dumps({"probe": probe}).encode()] * 20)
        wait_for(lambda: sum(map(int, redis_client.hvals(runs))) >= 20, timeout=10)
        time.sleep(QUIET)
        return sum(map(int, redis_client.hvals(runs))) == 20

    wait_for(probed_once, timeout=30, interval=0.1, message="the instances never got in step")
    redis_client.delete(runs, runs + ":messages")
    messages = heartbeats_and_events(600)
    for first in range(0, 600, 50):  # paced: a stalled process loses one burst's share
        publish_all(redis_client, channel, messages[first : first + 50])
        total = first + 50
        wait_for(lambda: sum(map(int, redis_client.hvals(runs))) >= total, timeout=30)  # noqa: B023
    time.sleep(QUIET)

    per_instance = {k.decode(): int(v) for k, v in redis_client.hgetall(runs).items()}
    assert sum(per_instance.values()) == 600, per_instance
    assert len(per_instance) == 2, per_instance
    assert min(per_instance.values()) >= 120, per_instance
    by_message = {k.decode(): int(v) for k, v in redis_client.hgetall(runs + ":messages").items()}
    assert by_message[str([("status", "ok")])] == 240


def test_shared_listeners_on_memory() -> None:
    url = f"memory://{unique_name('shared-listen')}"
    heard, channel = Heard(), "readings"
    with Apps(url) as apps:
        _service, started = start_instances(apps, heard, channel, 3)
        messages = heartbeats_and_events(300)
        broker = broker_for(url)

        def publish(burst: list[bytes]) -> None:
            for message in burst:
                broker.publish(channel, message)

        publish_paced(publish, channel, messages, heard)
        settled(heard, 300)
        assert heard.messages() == expected(messages)
        assert len(heard.per_instance()) == 3
        started[2].stop()
        wait_for(lambda: len(runtime_of(started[0]).instances.others) == 1)
        heard.records.clear()
        for message in messages:
            broker.publish(channel, message)
        settled(heard, 300)
        assert heard.messages() == expected(messages)
