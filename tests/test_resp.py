"""The asyncio RESP connection: commands, replies in order, pushes, and packing."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
import redis

from _helpers import unique_name, wait_until
from daebus import TransportError
from daebus.transport import _resp
from daebus.transport._endpoint import Endpoint
from daebus.transport._resp import pack, pack_publish


async def test_callback_waiters_get_replies_errors_and_a_lost_connection(redis_url: str) -> None:
    connection = await _resp.open_connection(Endpoint.from_url(redis_url))
    outcomes: list[Any] = []

    def failing(_outcome: Any) -> None:
        raise RuntimeError("a broken callback")

    connection.send_packed_then(pack("PING"), outcomes.append)
    connection.send_packed_then(pack("NO-SUCH-COMMAND"), outcomes.append)
    connection.send_packed_then(pack("PING"), failing)  # logged; the replies after it still arrive
    future = connection.send_packed(pack("ECHO", "after"))
    connection.send_packed_then(pack("ECHO", "last"), outcomes.append)
    assert await future == b"after"
    assert outcomes[0] == b"PONG"
    assert isinstance(outcomes[1], TransportError)
    assert outcomes[2:] == [b"last"]
    # Waiting for a reply that never comes: the connection goes, the callback hears of it.
    connection.send_packed_then(pack("BLPOP", unique_name("empty"), "0"), outcomes.append)
    connection.close()
    await connection.lost
    assert isinstance(outcomes[3], TransportError)


async def test_a_cancelled_connect_raises_and_leaves_nothing_open(private_redis: Any) -> None:
    # Cancelled at each step of its way (connecting, handshake, done), opening a connection
    # must raise CancelledError and close what it opened. With asyncio.wait_for on 3.11,
    # a cancel arriving as the connect finished was swallowed and the connection returned.
    endpoint = Endpoint.from_url(private_redis.url)
    returned: list[_resp.RespConnection] = []
    for attempt in range(400):
        opening = asyncio.ensure_future(_resp.open_connection(endpoint))
        for _ in range(attempt % 8):
            await asyncio.sleep(0)
        opening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            returned.append(await opening)
    for connection in returned:
        connection.close()
    assert len(returned) == 0, f"{len(returned)} of 400 cancelled connects returned anyway"

    client = redis.Redis.from_url(private_redis.url)
    try:
        # Closed sockets take a loop iteration or two to go; then only this client is left.
        await wait_until(
            lambda: client.info("clients")["connected_clients"] == 1,
            message="connections other than this client's are still open",
        )
    finally:
        client.close()


async def test_big_chunks_are_parsed_in_order_across_pauses() -> None:
    # Chunks far over the parser's feed size, arriving while the reader is paused.
    gates: dict[int, asyncio.Future[None]] = {}
    seen: list[int] = []

    def on_push(message: list[Any]) -> asyncio.Future[None] | None:
        number = int(message[2])
        seen.append(number)
        if number % 1000 == 999:  # back-pressure now and then: the reader pauses
            gates[number] = asyncio.get_running_loop().create_future()
            return gates[number]
        return None

    def frames(numbers: range) -> bytes:
        return b"".join(
            b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$%d\r\n%d\r\n" % (len(str(n)), n) for n in numbers
        )

    connection = _resp.RespConnection(on_push)
    first, second = frames(range(0, 3000)), frames(range(3000, 6000))
    assert len(first) > 10 * _resp._FEED_SIZE
    connection.data_received(first[:12345])  # cut in the middle of a message
    connection.data_received(first[12345:])
    connection.data_received(second)
    while len(seen) < 6000:
        assert gates, f"stalled after {len(seen)} messages"
        gate = gates.pop(max(gates))
        gate.set_result(None)
        await asyncio.sleep(0)
    assert seen == list(range(6000))


@pytest.mark.parametrize(
    ("channel", "data"),
    [("c", b"{}"), ("", b""), ("caf\u00e9:\u2603", b"\x00\r\n" * 50), ("x" * 300, b"y" * 70_000)],
)
def test_pack_publish_packs_what_pack_does(channel: str, data: bytes) -> None:
    assert pack_publish(channel, data) == pack("PUBLISH", channel, data)
    assert pack_publish(channel, data.decode("latin-1")) == pack(
        "PUBLISH", channel, data.decode("latin-1")
    )
