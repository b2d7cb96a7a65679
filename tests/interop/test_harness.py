"""Self-tests of the test harness: server fixtures, helpers, and the daebus 0.0.31 side.

None of these use our package, so they pin the harness down on its own: when an interop
test fails, these say whether to look at the harness or at daebus.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import uuid
from pathlib import Path

import pytest
import redis

from _helpers import ServiceProcess, Subscription, wait_for, wait_subscribed
from _servers import RedisEndpoint, RedisServer
from interop._legacy import LEGACY_CALLER, legacy_process


def _ping(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


class TestRedisServer:
    def test_shared_server_is_on_loopback_and_not_the_default_port(
        self, redis_server: RedisEndpoint, redis_url: str
    ) -> None:
        assert redis_url == f"redis://{redis_server.host}:{redis_server.port}/0"
        assert redis_server.is_running()
        assert _ping(redis_url)
        if isinstance(redis_server, RedisServer):
            assert redis_server.host == "127.0.0.1"
            assert redis_server.port != 6379

    def test_persistence_is_off(self, private_redis: RedisServer) -> None:
        client = redis.Redis.from_url(private_redis.url)
        try:
            assert client.config_get("save") == {"save": ""}
            assert client.config_get("appendonly") == {"appendonly": "no"}
            assert str(client.config_get("bind")["bind"]).split() == ["127.0.0.1"]
        finally:
            client.close()

    def test_kill_and_restart_on_the_same_port(self, private_redis: RedisServer) -> None:
        url, port = private_redis.url, private_redis.port
        client = redis.Redis.from_url(url, socket_timeout=2.0)
        try:
            client.set("k", "v")
            private_redis.kill()
            assert not private_redis.is_running()
            with pytest.raises(redis.ConnectionError):
                client.ping()
            private_redis.restart()
            assert private_redis.port == port
            assert private_redis.url == url
            # A fresh process without persistence: the key is gone, the client reconnects.
            assert client.get("k") is None
        finally:
            client.close()

    def test_stop_then_start_again_immediately(self, private_redis: RedisServer) -> None:
        port = private_redis.port
        # Leave a connection that the server closes, so the port sees TIME_WAIT sockets.
        client = redis.Redis.from_url(private_redis.url)
        client.ping()
        private_redis.stop()
        client.close()
        assert not private_redis.is_running()
        assert not _ping(private_redis.url)
        private_redis.start()
        assert private_redis.port == port
        assert _ping(private_redis.url)

    def test_does_not_answer_for_a_foreign_server_on_its_port(self, server_binary: Path) -> None:
        # A port already taken by someone else must not be mistaken for our server.
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", 0))
            squatter.listen()
            taken = squatter.getsockname()[1]
            server = RedisServer(server_binary, port=taken)
            try:
                with pytest.raises(RuntimeError, match="failed to start"):
                    server.start(timeout=1.0)
                assert "Address already in use" in server.read_log()
            finally:
                server.close()


class TestHelpers:
    def test_wait_for_returns_the_value_and_times_out_with_the_message(self) -> None:
        assert wait_for(lambda: 42, timeout=0.1) == 42
        with pytest.raises(AssertionError, match="never true"):
            wait_for(lambda: False, timeout=0.05, message="never true")

    def test_wait_subscribed_and_subscription(self, redis_url: str) -> None:
        channel = f"harness.{uuid.uuid4().hex}"
        with Subscription(redis_url, channel) as sub:
            assert wait_subscribed(redis_url, channel, timeout=2.0) == 1
            publisher = redis.Redis.from_url(redis_url)
            try:
                assert publisher.publish(channel, json.dumps({"x": 1})) == 1
            finally:
                publisher.close()
            assert sub.get_json(timeout=5.0) == {"x": 1}
            with pytest.raises(AssertionError, match="no message"):
                sub.get(timeout=0.05)

    def test_service_process_lifecycle(self, redis_url: str) -> None:
        channel = f"harness.{uuid.uuid4().hex}"
        code = (
            "import os, sys, redis\n"
            "print('url', os.environ['DAEBUS_REDIS_URL'])\n"
            "print('to stderr', file=sys.stderr)\n"
            "p = redis.Redis.from_url(os.environ['DAEBUS_REDIS_URL']).pubsub()\n"
            f"p.subscribe({channel!r})\n"
            "for m in p.listen(): pass\n"
        )
        with ServiceProcess(code=code, redis_url=redis_url, name="subscriber") as proc:
            proc.wait_ready(channel)
            assert proc.is_running()
            assert proc.terminate(signal.SIGTERM) == -signal.SIGTERM
            assert not proc.is_running()
            assert f"url {redis_url}" in proc.stdout()
            assert "to stderr" in proc.stderr()
            assert "subscriber stdout" in proc.output()

    def test_wait_ready_fails_fast_when_the_process_dies(self, redis_url: str) -> None:
        code = "import sys; print('bye', file=sys.stderr); sys.exit(3)"
        with (
            ServiceProcess(code=code, redis_url=redis_url) as proc,
            pytest.raises(AssertionError, match=r"exited with 3(.|\n)*bye"),
        ):
            proc.wait_ready("never", timeout=30.0)

    def test_wait_kills_a_process_that_does_not_exit(self, redis_url: str) -> None:
        with ServiceProcess(code="import time; time.sleep(60)", redis_url=redis_url) as proc:
            with pytest.raises(AssertionError, match="did not exit"):
                proc.wait(timeout=0.2)
            assert not proc.is_running()

    def test_daebus_environment_is_cleared(self) -> None:
        import os

        # Only the test settings of conftest's autouse fixture are left, and the event
        # loop a run may choose for itself.
        left = {name for name in os.environ if name.startswith("DAEBUS_")}
        assert left - {"DAEBUS_EVENT_LOOP"} == {"DAEBUS_DEFAULT_REDIS_URL", "DAEBUS_RUNTIME_DIR"}
        assert os.environ["DAEBUS_DEFAULT_REDIS_URL"] != "redis://localhost:6379/0"

    def test_runs_modules_with_the_given_python(self, redis_url: str) -> None:
        with ServiceProcess(
            module="json.tool", args=("--help",), redis_url=redis_url, python=sys.executable
        ) as proc:
            assert proc.wait(timeout=20.0) == 0
            assert "usage" in proc.stdout().lower()


@pytest.mark.interop
class TestLegacyAgainstLegacy:
    """daebus 0.0.31 against itself through our fixtures: proves the venv and the scripts."""

    def test_legacy_caller_against_legacy_service(
        self, legacy_python: Path, legacy_service: str, redis_url: str
    ) -> None:
        with legacy_process(
            legacy_python,
            LEGACY_CALLER,
            legacy_service,
            "--fail-message",
            "legacy says no",
            redis_url=redis_url,
        ) as caller:
            code = caller.wait(timeout=40.0)
            summary = json.loads(caller.stdout().splitlines()[-1])
            assert summary == {
                "echo": {"a": 1},
                "stream_parts": [{"i": 0}, {"i": 1}, {"i": 2}],
                "stream_final": {"done": True},
                "fail_error": "legacy says no",
                "mismatches": [],
            }
            assert code == 0

    def test_legacy_listener_rebroadcasts_on_the_test_server(
        self, legacy_service: str, redis_url: str
    ) -> None:
        nonce = uuid.uuid4().hex
        with Subscription(redis_url, "interop.from_legacy") as sub:
            publisher = redis.Redis.from_url(redis_url)
            try:
                assert publisher.publish("interop.to_legacy", json.dumps({"n": nonce})) == 1
            finally:
                publisher.close()
            # Arriving here proves 0.0.31's broadcast was rebound away from localhost:6379.
            assert sub.get_json_matching(lambda m: m.get("n") == nonce) == {"n": nonce}

    def test_legacy_service_speaks_the_documented_envelopes(
        self, legacy_service: str, redis_url: str
    ) -> None:
        reply_to = f"caller:{uuid.uuid4()}"
        request_id = str(uuid.uuid4())
        target = f"harness.{uuid.uuid4().hex}"
        envelope = {
            "action": "shout",
            "payload": {"channel": target, "message": {"y": 2}},
            "reply_to": reply_to,
            "request_id": request_id,
            "service": legacy_service,
        }
        with Subscription(redis_url, reply_to, target) as sub:
            publisher = redis.Redis.from_url(redis_url)
            try:
                assert publisher.publish(legacy_service, json.dumps(envelope)) == 1
            finally:
                publisher.close()
            messages = [sub.get(timeout=5.0) for _ in range(2)]
        received = {channel: json.loads(data) for channel, data in messages}
        assert received[target] == {"y": 2}
        assert received[reply_to] == {
            "status": "success",
            "payload": {"receivers": 1},
            "request_id": request_id,
            "final": True,
        }
