"""The wire format of 0.0.31, byte for byte where it matters."""

from __future__ import annotations

import json
import os
import re
import uuid

import pytest

from daebus import PubSubRequest, PubSubResponse, protocol


def test_request_envelope_has_the_five_keys_in_order() -> None:
    data = protocol.encode_request("echo", {"a": 1}, "caller:x", "r-1", "svc1")
    assert list(json.loads(data)) == ["action", "payload", "reply_to", "request_id", "service"]
    assert json.loads(data) == {
        "action": "echo",
        "payload": {"a": 1},
        "reply_to": "caller:x",
        "request_id": "r-1",
        "service": "svc1",
    }


def test_reply_envelope_has_the_four_keys_in_order() -> None:
    data = protocol.encode_reply("success", {"v": 1}, "r-1", False)
    assert list(json.loads(data)) == ["status", "payload", "request_id", "final"]
    assert json.loads(data)["final"] is False


def test_channel_names() -> None:
    assert protocol.service_channel("svc1") == "svc1"
    assert re.fullmatch(
        r"caller:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}",
        protocol.new_reply_channel(),
    )
    assert protocol.fallback_reply_channel("svc1") == "svc1.responses"
    # 0.0.31 made "None.responses", "[].responses"... of a junk service field.
    for junk in (None, "", [], {"a": 1}, 7, True):
        assert protocol.fallback_reply_channel(junk) is None
    assert protocol.workflow_channel("svc1") == "svc1.workflows"
    assert protocol.is_pattern("user:*")
    assert protocol.is_pattern("a?c")
    assert protocol.is_pattern("[ab]")
    assert not protocol.is_pattern("user:1")


def test_decode_reply_defaults_final_to_true() -> None:
    reply = protocol.decode_reply(b'{"status": "error", "payload": {"error": "bad"}}')
    assert reply.final
    assert reply.is_error
    assert reply.error_message == "bad"
    assert protocol.decode_reply(b'{"status": "success", "final": false}').final is False
    assert protocol.decode_reply(b'{"status": "error", "payload": "x"}').error_message == "x"


@pytest.mark.parametrize("bad", [b"nope", b"\xff", b"[1]", b"1", b'"s"'])
def test_decode_object_rejects_what_is_not_a_json_object(bad: bytes) -> None:
    with pytest.raises(protocol.BadMessageError):
        protocol.decode_object(bad)


def test_pubsub_request_fields_and_payload_variants() -> None:
    request = PubSubRequest(
        {"action": "a", "payload": {"x": 1}, "reply_to": "c", "request_id": "r"}
    )
    assert (request.payload, request.reply_to, request.request_id, request.service) == (
        {"x": 1},
        "c",
        "r",
        None,
    )
    assert PubSubRequest({"action": "a"}).payload == {}
    assert PubSubRequest({"action": "a", "payload": None}).payload is None
    assert PubSubRequest({"action": "a", "payload": "[1, 2]"}).payload == [1, 2]
    assert PubSubRequest({"action": "a", "payload": "words"}).payload == "words"
    assert PubSubRequest({"action": "a", "x": 1}).payload == {"x": 1}  # flat send_to_service
    assert PubSubRequest('{"action": "a", "data": 2}').raw == {"action": "a", "data": 2}
    with pytest.raises(ValueError, match="not valid UTF-8 JSON"):
        PubSubRequest("not json")
    with pytest.raises(TypeError):
        PubSubRequest(42)  # type: ignore[arg-type]


class FakePublisher:
    """Records publishes; stands in for a redis client (the unit here has no wire)."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, object]]] = []

    def publish(self, channel: str, data: bytes) -> int:
        self.published.append((channel, json.loads(data)))
        return 1


def test_pubsub_response_send_error_progress_and_fallback_channel() -> None:
    publisher = FakePublisher()
    response = PubSubResponse(publisher, PubSubRequest({"request_id": "r", "service": "s"}))
    assert response.send({"ok": 1}, final=False) == 1
    response.progress({"step": 1}, progress_percentage=-5)
    response.error(ValueError("bad input"))
    assert publisher.published == [
        (
            "s.responses",
            {"status": "success", "payload": {"ok": 1}, "request_id": "r", "final": False},
        ),
        (
            "s.responses",
            {
                "status": "success",
                "payload": {"step": 1, "progress_percentage": 0.0},
                "request_id": "r",
                "final": False,
            },
        ),
        (
            "s.responses",
            {
                "status": "error",
                "payload": {"error": "bad input"},
                "request_id": "r",
                "final": True,
            },
        ),
    ]
    assert response.final_sent


def test_progress_payload_adds_a_clamped_percentage() -> None:
    assert protocol.progress_payload({"step": 1}, 150) == {"step": 1, "progress_percentage": 100.0}
    assert protocol.progress_payload("x", -5) == {"data": "x", "progress_percentage": 0.0}
    assert protocol.progress_payload({"step": 1}, None) == {"step": 1}


def test_request_ids_are_distinct_uuid4_strings() -> None:
    ids = [protocol.new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for request_id in ids[:200]:
        parsed = uuid.UUID(request_id)
        assert str(parsed) == request_id
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_makes_other_request_ids_than_its_parent() -> None:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write three ids and leave at once
        os.write(write_end, " ".join(protocol.new_request_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end) as pipe:
        child_ids = set(pipe.read().split())
    parent_ids = {protocol.new_request_id() for _ in range(3)}
    assert len(child_ids) == 3
    assert not child_ids & parent_ids


def test_a_response_to_a_request_with_no_reply_channel_publishes_nothing() -> None:
    publisher = FakePublisher()
    for fields in ({"service": None}, {"service": ["x"]}, {"reply_to": ["x"]}):
        response = PubSubResponse(publisher, PubSubRequest({"request_id": "r", **fields}))
        assert response.request.reply_channel is None
        assert response.send({"ok": 1}) == 0
        assert response.final_sent
    request = PubSubRequest({"reply_to": "caller:1", "request_id": "r"})
    request.reply_channel = None  # what a running service does with a refused reply_to
    assert PubSubResponse(publisher, request).send(1) == 0
    assert publisher.published == []


def test_reply_channels_allow_callers_and_the_services_responses_only() -> None:
    replies = protocol.ReplyChannels("svc", ["myapp.replies.*"])
    replies.listening_on(["events"], ["junk.*"])
    for allowed in (
        "caller:045c8da3-5f4a-4db1-94ad-351d9b1c3e5d",
        "caller_123456",
        "svc.responses",
        "myapp.replies.7",
    ):
        assert replies.refusal(allowed) is None, allowed
    refused = {
        "svc": "the service's own channel",
        "svc.workflows": "the service's own channel",
        "events": "a channel the service listens on",
        "junk.x": "a channel the service listens on",
        "victim": "not a reply channel",
        "victim.responses": "not a reply channel",
        "victim-events": "not a reply channel",
        "caller:" + "x" * 300: "over 200 characters",
        "caller:\ud800": "not valid Unicode",
        7: "not a string but int",
        None: "not a string but NoneType",
    }
    for channel, reason in refused.items():
        refusal = replies.refusal(channel)
        assert refusal is not None, channel
        assert reason in refusal, (channel, refusal)
    assert replies.fallback("svc") == "svc.responses"
    assert replies.fallback("victim") is None
    assert replies.fallback(None) is None
    # A listener on a pattern that takes in callers' channels: no reply goes there.
    replies.listening_on([], ["caller:*"])
    assert replies.refusal("caller:1") == "a channel the service listens on"


def test_a_service_name_with_glob_characters_allows_only_its_own_responses() -> None:
    replies = protocol.ReplyChannels("svc[1]*")
    assert replies.refusal("svc[1]*.responses") is None
    assert replies.refusal("svc1x.responses") is not None


def test_shorten_bounds_what_is_echoed_and_says_how_long_it_was() -> None:
    assert protocol.shorten("echo") == "echo"
    long = protocol.shorten("a" * 5_000_000)
    assert long == "a" * 200 + "... (5000000 characters)"
    assert len(protocol.shorten(list(range(1_000_000)))) < 300
    assert len(protocol.shorten({"k" * 10_000: "v"})) < 300
    # A field cannot forge a line of the log.
    assert protocol.shorten("x\n2026-12-07 ERROR forged\x00") == "x\\n2026-12-07 ERROR forged\\x00"


def test_a_busy_reply_is_a_0031_error_with_a_code() -> None:
    data = protocol.encode_reply(
        protocol.STATUS_ERROR, protocol.busy_payload("service 's' is busy"), "r", True
    )
    assert json.loads(data) == {
        "status": "error",
        "payload": {"error": "service 's' is busy", "code": "busy"},
        "request_id": "r",
        "final": True,
    }
    reply = protocol.decode_reply(data)
    assert reply.is_error
    assert reply.error_message == "service 's' is busy"  # what a 0.0.31 caller raises
    assert reply.error_code == protocol.CODE_BUSY
    assert protocol.decode_reply(b'{"status": "error", "payload": "x"}').error_code is None
