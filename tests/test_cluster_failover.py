"""A master of the cluster killed mid-traffic, its replica promoted: nothing is restarted.

Each test has a cluster of its own (`private_cluster`, which fails a silent master over
after one second) and kills the master that serves what it uses. Services and callers
must follow the slots to the promoted replica by themselves.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import pytest
import redis

from _apps import Apps
from _cluster import ClusterNode, ValkeyCluster
from _helpers import unique_name, wait_for, wait_until
from daebus import Daebus, DaebusError, TransportError, broadcast, request
from daebus.protocol import service_channel, stream_key
from daebus.transport import Delivery, transport_from_url
from daebus.transport.base import StreamEntry

pytestmark = pytest.mark.timeout(120)

#: The promise: answering again within this many seconds of the promotion.
ANSWER_AGAIN_WITHIN = 5.0
#: Each call of the steady caller: a call under way during the failover ends by then.
CALL_TIMEOUT = 2.0


def adder() -> Daebus:
    app = Daebus("adder")

    @app.action("add")
    def add() -> Any:
        return request.payload["a"] + request.payload["b"]

    return app


class SteadyCalls:
    """Calls ``add`` over and over from a thread; remembers when each ended, and how."""

    def __init__(self, apps: Apps, service: str) -> None:
        self._caller = apps.caller(service, timeout=CALL_TIMEOUT)
        self.outcomes: list[tuple[float, float, bool, str]] = []  # start, end, answered, error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SteadyCalls:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            started = time.monotonic()
            try:
                answered = self._caller.send_request("add", {"a": n, "b": 1}) == n + 1
                error = ""
            except DaebusError as exc:
                answered, error = False, f"{type(exc).__name__}: {exc}"
            self.outcomes.append((started, time.monotonic(), answered, error))
            if not answered:
                self._stop.wait(0.05)  # a refused call comes back at once: not a busy loop

    def first_answer_after(self, moment: float) -> float | None:
        """When the first call started after ``moment`` was answered, if one was."""
        return next((end for start, end, ok, _ in self.outcomes if ok and start >= moment), None)


def test_a_service_answers_again_within_5_s_of_its_masters_promotion(
    private_cluster: ValkeyCluster,
) -> None:
    with Apps(private_cluster.url) as apps:
        service = apps.start(adder())
        with SteadyCalls(apps, service) as calls:
            wait_for(lambda: any(ok for *_, ok, _ in calls.outcomes), timeout=10)
            _killed, replica = private_cluster.kill_master_of(service_channel(service))
            promoted_at = private_cluster.wait_promoted(replica)
            wait_for(
                lambda: calls.first_answer_after(promoted_at) is not None,
                timeout=30,
                message=lambda: f"no answer since the promotion; last: {calls.outcomes[-3:]}",
            )
            answered_at = calls.first_answer_after(promoted_at)
        assert answered_at is not None
        after = answered_at - promoted_at
        failures = sorted({error.split(":")[0] for *_, ok, error in calls.outcomes if not ok})
        print(f"answered again {after:.2f} s after the promotion; meanwhile {failures}")
        assert after <= ANSWER_AGAIN_WITHIN
        # Every call under way meanwhile ended (answered, or with an error): none hung.
        assert not calls._thread.is_alive()
        failed = [error for *_, ok, error in calls.outcomes if not ok]
        assert all(error for error in failed)


def send_durable(url: str, channel: str, payload: Any) -> str:
    """``broadcast.send(durable=True)`` as a script would, to ``url``."""
    os.environ["DAEBUS_REDIS_URL"] = url
    try:
        return str(broadcast.send(channel, payload, durable=True))
    finally:
        del os.environ["DAEBUS_REDIS_URL"]


def test_a_durable_listener_keeps_consuming_after_its_streams_master_fails_over(
    private_cluster: ValkeyCluster,
) -> None:
    channel = unique_name("orders")
    seen: list[Any] = []
    app = Daebus("durable")

    @app.listen(channel, durable=True)
    def on_order(data: Any) -> None:
        seen.append(data["n"])

    with Apps(private_cluster.url) as apps:
        apps.start(app)
        send_durable(apps.url, channel, {"n": 0})
        wait_for(lambda: seen == [0], timeout=10)

        _killed, replica = private_cluster.kill_master_of(stream_key(channel))
        private_cluster.wait_promoted(replica)

        # The sender may need a try or two while its own slot map catches up.
        def sent() -> bool:
            try:
                send_durable(apps.url, channel, {"n": 1})
            except DaebusError:
                return False
            return True

        wait_for(sent, timeout=30, interval=0.2)
        wait_for(lambda: 1 in seen, timeout=30, message=lambda: f"seen {seen}")


# -- the transport on its own -------------------------------------------------------------


async def test_a_durable_read_follows_its_stream_to_the_promoted_replica(
    private_cluster: ValkeyCluster,
) -> None:
    stream = unique_name("stream")
    transport = transport_from_url(private_cluster.url)
    await transport.connect()
    try:
        assert await transport.stream_create_group(stream, "g", "$")
        assert await transport.stream_read(stream, "g", "c", 10, 10) == []
        master = private_cluster.master_of(stream)
        with redis.Redis(host=master.host, port=master.port) as client:
            assert client.execute_command("WAIT", 1, 5000) == 1  # the group is on the replica
        _killed, replica = private_cluster.kill_master_of(stream)
        await asyncio.to_thread(private_cluster.wait_promoted, replica)
        with redis.Redis(host=replica.host, port=replica.port) as client:
            entry_id = client.xadd(stream, {"data": b"after"}).decode()

        # Nothing but the reads: no other command of the transport refreshes its slot map.
        entries: list[StreamEntry] = []
        deadline = time.monotonic() + 30
        while not entries:
            try:
                entries = await transport.stream_read(stream, "g", "c", 10, 100)
            except TransportError:
                assert time.monotonic() < deadline, "the read never reached the new master"
                await asyncio.sleep(0.1)
        assert [(e.id, e.fields) for e in entries] == [(entry_id, {"data": b"after"})]
    finally:
        await transport.close()


async def test_a_channel_whose_slot_moves_is_subscribed_on_its_new_master(
    private_cluster: ValkeyCluster,
) -> None:
    channel = unique_name("moving")
    transport = transport_from_url(private_cluster.url)
    await transport.connect()
    received: asyncio.Queue[Delivery] = asyncio.Queue()
    try:
        await transport.subscribe(channel, received.put_nowait)
        source = private_cluster.master_of(channel)
        target = next(
            node
            for node in private_cluster.nodes
            if node is not source and private_cluster.is_master(node)
        )
        # The source drops the channel's subscribers with a sunsubscribe nobody asked for.
        await asyncio.to_thread(private_cluster.move_slot_of, channel, target)

        def subscribers_on(node: ClusterNode) -> int:
            with redis.Redis(host=node.host, port=node.port) as client:
                return int(client.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1])

        await wait_until(lambda: subscribers_on(target) == 1, timeout=10)
        assert subscribers_on(source) == 0
        assert await transport.publish(channel, b"moved") == 1
        assert (await asyncio.wait_for(received.get(), 5)).data == b"moved"
    finally:
        await transport.close()
