"""Clients that publish bare JSON: a request without ``reply_to`` is answered on
``<service>.responses``, its returned value as an explicit ``response.send`` would be,
when its ``service`` field names this service or is absent (or null).

A request meant for another service, or with a junk ``service`` field, is run but not
answered: the service never makes a channel name of it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from _apps import Apps
from _helpers import QUIET, Subscription, unique_name
from daebus import Daebus, request
from daebus.testing import run_app


def adder() -> Daebus:
    app = Daebus("adder")

    @app.action("add")
    def add() -> int:
        return int(request.payload["a"]) + int(request.payload["b"])

    @app.action("aadd")
    async def aadd() -> int:
        return int(request.payload["a"]) + int(request.payload["b"])

    @app.action("fail")
    def fail() -> None:
        raise ValueError("no good")

    @app.action("afail")
    async def afail() -> None:
        raise ValueError("no good either")

    @app.action("parts")
    def parts() -> Any:
        yield 1
        yield 2
        return "done"

    return app


def publish(url: str, channel: str, message: dict[str, Any]) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.publish(channel, json.dumps(message))
    finally:
        client.close()


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("add", {"status": "success", "payload": 3}),
        ("aadd", {"status": "success", "payload": 3}),
        ("fail", {"status": "error", "payload": {"error": "no good"}}),
        ("afail", {"status": "error", "payload": {"error": "no good either"}}),
        ("nope", {"status": "error"}),
    ],
)
def test_a_bare_json_request_is_answered_on_the_services_responses(
    apps: Apps, action: str, expected: dict[str, Any]
) -> None:
    service = apps.start(adder())
    with Subscription(apps.url, f"{service}.responses") as responses:
        publish(apps.url, service, {"action": action, "a": 1, "b": 2})  # the flat shape
        reply = responses.get_json()
    assert reply.items() >= expected.items(), reply
    assert reply["request_id"] is None
    assert reply["final"] is True
    if action == "nope":
        assert "Unknown action 'nope'" in reply["payload"]["error"]


def test_the_service_field_says_whether_a_bare_request_is_answered(apps: Apps) -> None:
    service = apps.start(adder())
    other = unique_name("other")
    with Subscription(apps.url, f"{service}.responses", f"{other}.responses") as sub:
        for n, field in enumerate([other, ["x"], {"a": 1}, 7, "", service, None]):
            message = {"action": "add", "payload": {"a": n, "b": 0}, "request_id": f"r{n}"}
            message["service"] = field
            publish(apps.url, service, message)
        publish(apps.url, service, {"action": "aadd", "payload": {"a": 1, "b": 1}})
        got = []
        while True:
            try:
                channel, data = sub.get(timeout=QUIET)  # an absence window: no more replies
            except AssertionError:
                break
            got.append((channel, json.loads(data)))
    # Sorted: the async action's reply may overtake the def actions' (a worker thread).
    answered = [(channel, reply["request_id"], reply["payload"]) for channel, reply in got]
    assert sorted(answered, key=repr) == sorted(
        [
            (f"{service}.responses", "r5", 5),  # names this service
            (f"{service}.responses", "r6", 6),  # null
            (f"{service}.responses", None, 2),  # absent
        ],
        key=repr,
    )


def test_streamed_parts_and_the_returned_value_go_to_responses_in_order(apps: Apps) -> None:
    service = apps.start(adder())
    with Subscription(apps.url, f"{service}.responses") as responses:
        publish(apps.url, service, {"action": "parts", "service": service, "request_id": 9})
        replies = [responses.get_json() for _ in range(3)]
    assert [(r["payload"], r["final"], r["request_id"]) for r in replies] == [
        (1, False, 9),
        (2, False, 9),
        ("done", True, 9),
    ]


def test_on_memory_send_is_answered_on_responses() -> None:
    with run_app(adder(), service="adder") as client:
        client.send("add", {"a": 2, "b": 3})
        client.send("afail", {})
        replies = client.responses.wait(2)
        assert [message.channel for message in replies] == ["adder.responses"] * 2
        assert replies[0].payload["payload"] == 5
        assert replies[1].payload["payload"] == {"error": "no good either"}
        assert client.broadcasts.messages == []  # replies are not broadcasts
        assert client.call("add", {"a": 1, "b": 1}) == 2  # a caller's reply goes to it alone
        assert len(client.responses) == 2
