"""Interoperability with PyPI daebus 0.0.31 over a real server, in both directions.

0.0.31 runs in its own virtualenv (`legacy_python`); our side is this checkout's package.
docs/compatibility.md ("Wire protocol") describes what both sides speak.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _helpers import Subscription, unique_name
from daebus import DaebusCaller, RemoteError
from interop._legacy import LEGACY_CALLER, legacy_process

pytestmark = pytest.mark.interop

PARTS = [{"i": 0}, {"i": 1}, {"i": 2}]


class TestLegacyCallerToOurService:
    """(a) The 0.0.31 DaebusCaller calls a service written with our package."""

    def test_replies_streams_and_errors(
        self, legacy_python: Path, our_service: str, redis_url: str
    ) -> None:
        with legacy_process(
            legacy_python,
            LEGACY_CALLER,
            our_service,
            "--fail-message",
            "ours says no",
            "--crash-contains",
            "boom",
            redis_url=redis_url,
            name="legacy_caller",
        ) as caller:
            code = caller.wait(timeout=45.0)
            lines = caller.stdout().splitlines()
            assert lines, f"legacy_caller printed no summary\n{caller.output()}"
            summary = json.loads(lines[-1])
            crash_error = summary.pop("crash_error")
            assert summary == {
                "echo": {"a": 1},
                "stream_parts": PARTS,
                "stream_final": {"done": True},
                "fail_error": "ours says no",
                "mismatches": [],
            }
            # A raising handler is answered with an error reply (0.0.31 itself never replied).
            assert "boom" in crash_error
            assert code == 0


class TestOurCallerToLegacyService:
    """(b) Our DaebusCaller calls a 0.0.31 service."""

    def test_plain_reply(self, legacy_service: str, redis_url: str) -> None:
        with DaebusCaller(legacy_service, redis_url=redis_url, timeout=10) as caller:
            payload = {"a": 1, "nested": {"list": [1, "two", None], "ok": True}}
            assert caller.send_request("echo", payload) == payload

    def test_a_traced_call_is_answered(self, legacy_service: str, redis_url: str) -> None:
        """0.0.31 reads the envelope's five keys and ignores the trace context's."""
        sdk = pytest.importorskip("opentelemetry.sdk.trace")
        provider = sdk.TracerProvider()
        with (
            DaebusCaller(
                legacy_service,
                redis_url=redis_url,
                timeout=10,
                tracing=True,
                tracer_provider=provider,
            ) as caller,
            Subscription(redis_url, legacy_service) as requests,
        ):
            assert caller.send_request("echo", {"a": 1}) == {"a": 1}
            assert "traceparent" in requests.get_json()
            parts: list[object] = []
            assert caller.send_request("stream", {}, on_progress=parts.append) == {"done": True}
            assert parts == PARTS
        provider.shutdown()

    def test_streamed_parts_arrive_in_order_before_the_final(
        self, legacy_service: str, redis_url: str
    ) -> None:
        parts: list[object] = []
        with DaebusCaller(legacy_service, redis_url=redis_url, timeout=10) as caller:
            assert caller.send_request("stream", {}, on_progress=parts.append) == {"done": True}
        assert parts == PARTS

    def test_stream_iterator(self, legacy_service: str, redis_url: str) -> None:
        with DaebusCaller(legacy_service, redis_url=redis_url, timeout=10) as caller:
            assert list(caller.stream("stream", {})) == [*PARTS, {"done": True}]

    def test_error_reply_raises_remote_error(self, legacy_service: str, redis_url: str) -> None:
        with (
            DaebusCaller(legacy_service, redis_url=redis_url, timeout=10) as caller,
            pytest.raises(RemoteError) as excinfo,
        ):
            caller.send_request("fail", {})
        assert isinstance(excinfo.value, Exception)
        assert str(excinfo.value) == "legacy says no"


class TestBroadcasts:
    """(c) Bare-JSON broadcasts between our side and 0.0.31."""

    def test_our_message_reaches_a_legacy_listener(
        self, legacy_service: str, redis_url: str
    ) -> None:
        message = {"x": 1, "nonce": unique_name("n")}
        with (
            Subscription(redis_url, "interop.from_legacy") as sub,
            DaebusCaller(legacy_service, redis_url=redis_url) as caller,
        ):
            assert caller.send_message("interop.to_legacy", message) >= 1
            # The legacy listener re-publishes what it got, unchanged.
            received = sub.get_json_matching(lambda m: m.get("nonce") == message["nonce"])
        assert received == message

    def test_legacy_broadcast_reaches_our_listener(
        self, legacy_service: str, our_service: str, redis_url: str
    ) -> None:
        message = {"y": 2, "nonce": unique_name("n")}
        with (
            Subscription(redis_url, "interop.ours_got") as sub,
            DaebusCaller(legacy_service, redis_url=redis_url, timeout=10) as caller,
        ):
            # 0.0.31's `broadcast.send` publishes it (on the test server: see
            # _legacy_common.py), and our service's @app.listen re-broadcasts what it got.
            reply = caller.send_request("shout", {"channel": "interop.to_ours", "message": message})
            assert reply == {"receivers": 1}
            received = sub.get_json_matching(
                lambda m: m.get("got", {}).get("nonce") == message["nonce"]
            )
        assert received == {"got": message}

    def test_legacy_caller_reaches_our_listener_with_send_message(
        self, legacy_python: Path, our_service: str, redis_url: str
    ) -> None:
        message = {"z": 3, "nonce": unique_name("n")}
        code = (
            "import json, sys\n"
            "from _legacy_common import load_daebus, redis_address\n"
            "daebus = load_daebus()\n"
            "host, port = redis_address()\n"
            "caller = daebus.DaebusCaller('unused', redis_host=host, redis_port=port)\n"
            "print(caller.send_message('interop.to_ours', json.loads(sys.argv[1])))\n"
        )
        with Subscription(redis_url, "interop.ours_got") as sub:
            with legacy_process(
                legacy_python,
                None,
                json.dumps(message),
                code=code,
                redis_url=redis_url,
                name="legacy_publisher",
            ) as publisher:
                assert publisher.wait(timeout=30.0) == 0, publisher.output()
                assert publisher.stdout().strip() == "1"
            received = sub.get_json_matching(
                lambda m: m.get("got", {}).get("nonce") == message["nonce"]
            )
        assert received == {"got": message}
