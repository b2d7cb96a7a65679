"""``daebus listen --readable``: requests and replies shown as such."""

from __future__ import annotations

import json

import pytest

from _apps import Apps
from _helpers import ServiceProcess, unique_name, wait_for
from daebus import Daebus, protocol
from daebus.cli._listen import _print_message, describe_envelope

pytestmark = pytest.mark.timeout(60)


def test_requests_and_replies_are_described() -> None:
    request = protocol.encode_request("stock", {"item": "tea"}, "caller:1", "r-1", "inventory")
    assert describe_envelope(request) == ('request stock id=r-1 reply_to=caller:1 {"item": "tea"}')
    flat = json.dumps({"action": "add", "a": 1, "service": "calc", "request_id": 7}).encode()
    assert describe_envelope(flat) == 'request add id=7 {"a": 1}'
    assert describe_envelope(protocol.encode_reply("success", {"tea": 4}, "r-1", True)) == (
        'reply success id=r-1 final {"tea": 4}'
    )
    part = protocol.encode_reply("success", {"progress_percentage": 50.0}, "r-1", False)
    assert describe_envelope(part) == 'reply success id=r-1 part {"progress_percentage": 50.0}'
    error = protocol.encode_reply("error", protocol.error_payload("no tea\x1b[2J"), 3, True)
    assert describe_envelope(error) == 'reply error id=3 final "no tea\\u001b[2J"'
    forged = protocol.encode_request("x\n2026 FORGED", None, "caller:1", "i", "s")
    assert "\n" not in str(describe_envelope(forged))
    for other in (b'{"n": 1}', b"plain text", b"[1, 2]", b'{"status": "ok"}'):
        assert describe_envelope(other) is None


@pytest.mark.parametrize("readable", [False, True])
def test_a_channel_name_reaches_the_terminal_escaped(
    capsys: pytest.CaptureFixture[str], readable: bool
) -> None:
    # Anyone can publish on any channel: its name must not forge a line.
    _print_message(b"evil\r2026 FORGED", b'{"a": 1}', False, readable)
    line = capsys.readouterr().out
    assert "\r" not in line
    assert "evil\\r2026 FORGED" in line


def test_listen_readable_follows_the_calls_of_a_service(apps: Apps, redis_url: str) -> None:
    app = Daebus("followed")

    @app.action("stock")
    def stock() -> dict[str, int]:
        return {"tea": 4}

    service = apps.start(app, unique_name("followed"))
    listener = ServiceProcess(
        module="daebus.cli",
        args=["listen", "--readable", service, "caller:*", "--redis-url", redis_url],
        redis_url=redis_url,
        name="daebus-listen",
    )
    with listener:
        wait_for(lambda: "listening on" in listener.stderr(), timeout=10)
        apps.caller(service).send_request("stock", {"item": "tea"})

        def lines() -> list[list[str]]:
            return [line.split(" ", 2)[1:] for line in listener.stdout().splitlines()]

        def seen() -> list[list[str]] | None:
            found = lines()
            return found if len(found) >= 2 else None

        (request_channel, request), (reply_channel, reply) = wait_for(
            seen, message=lambda: listener.output()
        )[:2]
    assert request_channel == service
    assert request.startswith("request stock id=")
    assert request.endswith(f'reply_to={reply_channel} {{"item": "tea"}}')
    assert reply_channel.startswith("caller:")
    assert reply.startswith("reply success id=")
    assert reply.endswith(' final {"tea": 4}')
