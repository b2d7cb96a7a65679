"""Hostile input: junk on a service's channels does not crash it, reflect or flood logs.

Anyone who can publish on the server can send a service anything. A service sent a few
thousand junk messages (seeded, so a failure can be replayed) must:

- stay up and answer a call afterwards, with its memory bounded;
- publish nothing where a reply may not go: only ``caller:*``, ``caller_*`` and its own
  ``<service>.responses`` (a spy subscribed to every channel records what it publishes);
- keep its log bounded: no line per bad message, no traceback per message, no field of
  a message echoed in full, in a log line or in an error reply.
"""

from __future__ import annotations

import json
import random
import textwrap
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from _helpers import ServiceProcess, unique_name, wait_for
from _servers import RedisServer
from daebus import DaebusCaller

SERVICE_SCRIPT = textwrap.dedent(
    """
    import sys
    from daebus import Daebus, request, response

    service = sys.argv[1]
    app = Daebus("hostile", max_workers=1)

    @app.action("echo")
    def echo():
        return request.payload

    @app.action("aecho")
    async def aecho():
        return request.payload

    @app.action("stream")
    async def stream():
        for i in range(3):
            await response.send({"i": i}, final=False)
        return {"done": True}

    @app.action("count")
    async def count():
        return len(request.payload["items"])  # fails on most junk

    @app.listen(f"{service}-events")
    async def on_event(data):
        if isinstance(data, dict) and data.get("answer"):
            await response.send({"seen": True})  # a listener that answers, as 0.0.31's could

    @app.listen(f"{service}-junk.*")
    def on_junk(data, channel):
        response.send({"channel": channel})

    app.run(service=service)
    """
)

MiB = 1024 * 1024
#: Wrong values for every envelope field.
BAD_VALUES: list[Any] = [
    None,
    True,
    0,
    1.5e308,
    2**70,
    "",
    "x" * 1000,
    [],
    {},
    {"a": {"b": 1}},
    "\x00",
    "\ud800",  # a lone surrogate: valid JSON text, not valid Unicode
]
FIELDS = ["action", "payload", "reply_to", "request_id", "service"]


def dumps(value: Any) -> bytes:
    """JSON as the standard library writes it: big ints, lone surrogates and all."""
    return json.dumps(value).encode("utf-8", "surrogatepass")


class Spy:
    """``PSUBSCRIBE *`` in a thread: counts every message on every channel, keeps sizes."""

    def __init__(self, url: str) -> None:
        self.counts: Counter[bytes] = Counter()
        self.largest: dict[bytes, int] = {}
        self.messages: dict[bytes, list[bytes]] = {}
        self._client = redis.Redis.from_url(url)
        self._pubsub = self._client.pubsub()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Spy:
        self._pubsub.psubscribe("*")
        wait_for(lambda: self._pubsub.get_message(timeout=0.1) is not None, timeout=10)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._pubsub.close()
        self._client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.1)
            if message is None or message["type"] != "pmessage":
                continue
            channel, data = message["channel"], message["data"]
            with self._lock:
                self.counts[channel] += 1
                self.largest[channel] = max(self.largest.get(channel, 0), len(data))
                kept = self.messages.setdefault(channel, [])
                if len(kept) < 20:
                    kept.append(data[:300])

    def seen(self, channel: bytes) -> int:
        with self._lock:
            return self.counts[channel]


class Junk:
    """The messages of the flood, by channel; seeded."""

    def __init__(self, service: str, probe: str) -> None:
        self.rng = random.Random(20261207)
        self.service = service
        self.events = f"{service}-events"
        self.probe = probe
        self.messages: list[tuple[bytes, bytes]] = []
        # Where a reply or listener answer must never go.
        victim = unique_name("victim")
        self.forbidden = [
            victim,
            f"{victim}.workflows",
            f"{victim}-events",
            f"{victim}.responses",
            service,
            f"{service}.workflows",
            self.events,
            f"{service}-junk.x",
            "None.responses",
            "x" * 300,
            "",
        ]

    def add(self, channel: str | bytes, data: bytes) -> None:
        name = channel if isinstance(channel, bytes) else channel.encode()
        self.messages.append((name, data))

    def request(self, **fields: Any) -> dict[str, Any]:
        return {
            "action": "count",
            "payload": {"items": [1, 2]},
            "reply_to": self.probe,
            "request_id": uuid.uuid4().hex,
            "service": self.service,
            **fields,
        }

    def build(self) -> Junk:
        rng, service, events = self.rng, self.service, self.events
        for channel in (service, events):
            for _ in range(400):  # random bytes
                self.add(channel, rng.randbytes(rng.randrange(300)))
            for _ in range(250):  # truncated JSON
                whole = dumps(self.request(action=rng.choice(["echo", "stream"])))
                self.add(channel, whole[: rng.randrange(len(whole))])
            for depth in (200, 1025, 5000, 100_000):  # deep nesting, alone and as a payload
                nested = b"[" * depth + b"]" * depth
                self.add(channel, nested)
                self.add(channel, b'{"action": "echo", "payload": ' + nested + b"}")
                self.add(channel, b'{"a":' * depth + b"1" + b"}" * depth)
            for _ in range(50):  # not objects at all
                self.add(channel, dumps(rng.choice([[1, 2], "s", 3, None, True, 1.5])))
        for channel, count in ((service, 1500), (events, 300)):  # wrong types everywhere
            for _ in range(count):
                message = self.request(action=rng.choice(["echo", "aecho", "stream", "count"]))
                for field in rng.sample(FIELDS, rng.randint(1, 3)):
                    if rng.random() < 0.15:
                        del message[field]
                    else:
                        message[field] = rng.choice(BAD_VALUES)
                self.add(channel, dumps(message))
        for _ in range(200):  # invalid UTF-8 inside strings
            whole = dumps(self.request(action="echo", payload="abcdef"))
            at = whole.index(b"abcdef") + rng.randrange(6)
            self.add(rng.choice([service, events]), whole[:at] + b"\xff\xfe" + whole[at:])
        for _ in range(400):  # replies asked for elsewhere
            action = rng.choice(["echo", "aecho", "stream", "count", "nope"])
            reply_to = rng.choice(self.forbidden)
            self.add(service, dumps(self.request(action=action, reply_to=reply_to)))
            self.add(events, dumps({"answer": True, "reply_to": reply_to, "request_id": "r"}))
        for bad_service in (None, [], {"a": 1}, "victim", 7):  # fallback channels of junk
            for action in ("stream", "echo", "nope"):
                message = self.request(action=action, service=bad_service)
                del message["reply_to"]
                self.add(service, dumps(message))
                self.add(events, dumps({"answer": True, "service": bad_service}))
        for _ in range(300):  # channels of a pattern listener, named with random bytes
            self.add(f"{service}-junk.".encode() + rng.randbytes(rng.randrange(1, 40)), b"{}")
        return self

    def add_oversized(self) -> None:
        service = self.service
        self.add(service, dumps(self.request(action="echo", payload="x" * (9 * MiB))))
        self.add(service, dumps(self.request(action="y" * (5 * MiB))))
        self.add(service, dumps(self.request(action="echo", request_id="z" * (5 * MiB))))
        self.add(service, dumps(self.request(action="echo", reply_to="caller:" + "w" * MiB)))
        self.add(service, self.rng.randbytes(9 * MiB))
        self.add(self.events, dumps({"answer": True, "blob": "v" * (9 * MiB)}))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def hostile_service(
    private_redis: RedisServer, tmp_path: Path
) -> Iterator[tuple[ServiceProcess, str]]:
    service = unique_name("hostile")
    script = tmp_path / "service.py"
    script.write_text(SERVICE_SCRIPT)
    with ServiceProcess(script, args=[service], redis_url=private_redis.url) as proc:
        proc.wait_ready(service)
        proc.wait_ready(f"{service}-events")
        yield proc, service


def test_junk_on_every_channel_leaves_the_service_up_quiet_and_reflecting_nothing(
    private_redis: RedisServer, hostile_service: tuple[ServiceProcess, str]
) -> None:
    proc, service = hostile_service
    url = private_redis.url
    with DaebusCaller(service, redis_url=url, timeout=10) as caller, Spy(url) as spy:
        assert caller.send_request("echo", "before") == "before"
        pid = proc.pid
        assert pid is not None
        rss_before = rss_kib(pid)
        junk = Junk(service, caller.response_channel).build()
        junk.add_oversized()
        published: Counter[bytes] = Counter()
        client = redis.Redis.from_url(url)
        try:
            for start in range(0, len(junk.messages), 200):
                with client.pipeline(transaction=False) as pipe:
                    for channel, data in junk.messages[start : start + 200]:
                        pipe.publish(channel, data)
                        published[channel] += 1
                    pipe.execute()
            # The documents' "caller_123456" reply channels are answered too.
            documents = f"caller_{uuid.uuid4().hex[:6]}"
            client.publish(service, dumps(junk.request(action="echo", reply_to=documents)))
        finally:
            client.close()
        # The service handles messages in order, so these come after every other reply.
        assert caller.send_request("echo", "after") == "after"
        assert caller.send_request("aecho", "after") == "after"
        published[service.encode()] += 4  # the caller's requests and the documents' one
        probe = caller.response_channel.encode()
        wait_for(lambda: spy.seen(probe) >= published[probe] + 2, message="probe replies")
        wait_for(lambda: spy.seen(documents.encode()) >= 1, message="the caller_... reply")
        rss_after = rss_kib(pid)
        info = redis.Redis.from_url(url).info("stats")

    by_service = {ch: n - published[ch] for ch, n in spy.counts.items() if n > published[ch]}
    allowed = (b"caller:", b"caller_", f"{service}.responses".encode())
    reflected = {ch: n for ch, n in by_service.items() if not ch.startswith(allowed)}
    output = proc.output()
    print(
        f"{len(junk.messages)} junk messages; the service published {sum(by_service.values())}"
        f" ({dict(by_service) if len(by_service) < 8 else len(by_service)} channels), "
        f"{sum(reflected.values())} where it may not; largest reply "
        f"{max(spy.largest.get(ch, 0) for ch in by_service)} bytes; log {len(output)} bytes, "
        f"{output.count('Traceback')} tracebacks; RSS {rss_before // 1024} -> "
        f"{rss_after // 1024} MiB"
    )
    assert reflected == {}, {ch[:80]: spy.messages[ch][:2] for ch in list(reflected)[:5]}
    # Echoed fields are cut short: no reply carries a 5 MiB action name or id back.
    assert max(spy.largest.get(ch, 0) for ch in by_service) < 10_000
    assert len(output) < 100_000, output[-5000:]
    assert output.count("Traceback") <= 3, output[-5000:]
    assert max(len(line) for line in output.splitlines()) < 3000
    assert rss_after - rss_before < 150 * 1024
    assert int(info["client_output_buffer_limit_disconnections"]) == 0
    assert "lost the subscriber connection" not in output
    assert proc.is_running()
