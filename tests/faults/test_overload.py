"""Overload: a service flooded faster than it handles keeps reading its connection.

Were it to stop reading, the queue would grow in the Redis server, which drops a
subscriber past its output-buffer limit, and everything queued with it, unannounced.
The service instead queues a bounded number of messages itself and refuses the rest at
once: a request with a busy error reply (``ServiceBusyError``), a broadcast with a
warning that counts the drops.

The tests lower the server's limit for subscribers to 4 MB (32 MB by default), so that a
flood of a few MB is enough to show it.
"""

from __future__ import annotations

import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from _helpers import ServiceProcess, unique_name, wait_for
from _servers import RedisServer
from daebus import CallTimeoutError, DaebusCaller, ServiceBusyError, protocol

SERVICE_SCRIPT = textwrap.dedent(
    """
    import asyncio
    import sys

    from daebus import Daebus, request

    service, in_flight, queued, queued_bytes, events = sys.argv[1:6]
    app = Daebus(
        "overload",
        max_workers=2,
        max_in_flight=int(in_flight),
        max_queued=int(queued),
        max_queued_bytes=int(queued_bytes),
    )

    @app.action("slow")
    async def slow():
        await asyncio.sleep(0.2)
        return request.payload

    @app.action("echo")
    def echo():
        return request.payload

    @app.listen(events)
    async def on_event(data):
        await asyncio.sleep(0.01)

    app.run(service=service)
    """
)

#: The server's output-buffer limit for a subscriber in these tests.
LIMIT = "4mb"
#: Each flood is twice the limit.
FLOOD_MESSAGES = 8000
KB = "x" * 1000

CALLERS = 40
CALL_TIMEOUT = 10.0


@pytest.fixture
def server(private_redis: RedisServer) -> Iterator[redis.Redis]:
    admin = redis.Redis.from_url(private_redis.url)
    admin.config_set("client-output-buffer-limit", f"pubsub {LIMIT} 0 0")
    try:
        yield admin
    finally:
        admin.close()


def start_service(
    url: str, tmp_path: Path, *, in_flight: int, queued: int, queued_bytes: int
) -> tuple[ServiceProcess, str, str]:
    service, events = unique_name("flooded"), unique_name("events")
    script = tmp_path / "service.py"
    script.write_text(SERVICE_SCRIPT)
    args = [service, str(in_flight), str(queued), str(queued_bytes), events]
    proc = ServiceProcess(script, args=args, redis_url=url).start()
    proc.wait_ready(service)
    proc.wait_ready(events)
    return proc, service, events


def disconnections(admin: redis.Redis) -> int:
    """How many clients the server dropped for going over their output-buffer limit."""
    return int(admin.info("stats")["client_output_buffer_limit_disconnections"])


def subscriber_omem(admin: redis.Redis) -> int:
    """The largest output buffer of a subscribed connection now, in bytes."""
    return max(
        (int(c["omem"]) for c in admin.client_list() if int(c["sub"]) or int(c["psub"])),
        default=0,
    )


def probe(url: str, service: str) -> Any:
    """Call ``echo`` until it is answered, a busy refusal meaning "again"."""
    with DaebusCaller(service, redis_url=url, timeout=CALL_TIMEOUT) as caller:

        def answered() -> bool:
            try:
                return caller.send_request("echo", "probe") == "probe"
            except ServiceBusyError:
                return False

        return wait_for(answered, timeout=30, interval=0.05, message="the probe was not answered")


class Flood:
    """A thread publishing ``count`` 1 KB messages on a channel as fast as it can."""

    def __init__(self, url: str, channel: str, message: bytes, count: int) -> None:
        self.counts: list[int] = []
        self.peak_omem = 0
        self.started = threading.Event()
        self._args = (url, channel, message, count)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Flood:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._thread.join(60)

    def _run(self) -> None:
        url, channel, message, count = self._args
        client = redis.Redis.from_url(url)
        try:
            for start in range(0, count, 100):
                with client.pipeline(transaction=False) as pipe:
                    for _ in range(min(100, count - start)):
                        pipe.publish(channel, message)
                    self.counts.extend(pipe.execute())
                self.peak_omem = max(self.peak_omem, subscriber_omem(client))
                self.started.set()
        finally:
            self.started.set()
            client.close()


def test_a_flooded_service_answers_every_caller_at_once_and_keeps_its_connection(
    server: redis.Redis, private_redis: RedisServer, tmp_path: Path
) -> None:
    url = private_redis.url
    proc, service, _ = start_service(url, tmp_path, in_flight=2, queued=8, queued_bytes=100_000)
    with proc:
        # Fire-and-forget requests for the slow action: they fill the queue and more.
        fire_and_forget = protocol.encode_request("slow", KB, None, None, service)
        outcomes: list[tuple[str, float]] = []
        lock = threading.Lock()

        def call(caller: DaebusCaller) -> None:
            began = time.monotonic()
            try:
                caller.send_request("slow", uuid.uuid4().hex)
                outcome = "reply"
            except ServiceBusyError as exc:
                outcome = "busy" if "is busy" in str(exc) else str(exc)
            except CallTimeoutError:
                outcome = "timeout"
            with lock:
                outcomes.append((outcome, time.monotonic() - began))

        with DaebusCaller(service, redis_url=url, timeout=CALL_TIMEOUT) as caller:
            caller.send_request("echo", "warm-up")  # connected before the flood
            with Flood(url, service, fire_and_forget, FLOOD_MESSAGES) as flood:
                flood.started.wait(10)
                threads = [threading.Thread(target=call, args=(caller,)) for _ in range(CALLERS)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(CALL_TIMEOUT + 20)
        kinds = sorted(outcome for outcome, _ in outcomes)
        slowest = max(seconds for _, seconds in outcomes)
        print(
            f"outcomes: {kinds.count('reply')} replies, {kinds.count('busy')} busy, "
            f"{kinds.count('timeout')} timeouts; slowest {slowest:.2f}s; "
            f"peak subscriber output buffer {flood.peak_omem} bytes; "
            f"{disconnections(server)} dropped for it"
        )
        assert set(kinds) <= {"reply", "busy"}, outcomes
        assert kinds.count("busy") >= 1, outcomes
        assert slowest < CALL_TIMEOUT / 2, outcomes  # none waited its timeout
        assert flood.counts == [1] * FLOOD_MESSAGES, "the service was unsubscribed meanwhile"
        assert disconnections(server) == 0
        assert probe(url, service)
        output = proc.output()
        assert "lost the subscriber connection" not in output
        # One warning, and later one count per period, not one line per refusal.
        assert output.count("refused a request unrun") <= 3, output[-3000:]


def test_listeners_that_fall_behind_drop_broadcasts_with_a_count_not_the_connection(
    server: redis.Redis, private_redis: RedisServer, tmp_path: Path
) -> None:
    url = private_redis.url
    proc, service, events = start_service(
        url, tmp_path, in_flight=2, queued=8, queued_bytes=100_000
    )
    with proc:
        message = b'{"kb": "' + KB.encode() + b'"}'
        with Flood(url, events, message, FLOOD_MESSAGES) as flood:
            pass
        print(
            f"peak subscriber output buffer {flood.peak_omem} bytes; "
            f"{disconnections(server)} dropped for it"
        )
        assert flood.counts == [1] * FLOOD_MESSAGES, "the service was unsubscribed meanwhile"
        assert disconnections(server) == 0
        assert probe(url, service)
        assert proc.terminate(timeout=20) == 0
        output = proc.output()
        assert "lost the subscriber connection" not in output
        drops = [line for line in output.splitlines() if "listeners fell behind" in line]
        assert 1 <= len(drops) <= 3, drops
        # The last line, at the latest at shutdown, counts the drops it held back.
        assert "more like this" in drops[-1], drops
