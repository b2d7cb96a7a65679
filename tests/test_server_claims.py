"""Every command finds the demo's services: ``daebus demo --keep-running`` claims the server.

A Redis answers where the default is probed (a private test server stands in for
localhost:6379); the demo runs on the shared server all the same, and the next command,
with nothing configured, must find it there, then the Redis again once the demo stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from _helpers import ServiceProcess, subscriber_count, wait_for
from _servers import RedisServer, kill_shared_servers
from daebus.cli import EXIT_NO_SERVICE
from daebus.server import CLAIMS_NAME, SharedServer, claim_shared_server, live_claim

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    # mkdtemp rather than tmp_path: a unix socket path must stay under ~100 bytes.
    path = Path(tempfile.mkdtemp(prefix="daebus-c-"))
    try:
        yield path
    finally:
        try:
            SharedServer(path).stop(timeout=5)
        finally:
            kill_shared_servers(path)
            shutil.rmtree(path, ignore_errors=True)


def test_the_next_command_finds_the_demos_services(
    private_redis: RedisServer, runtime_dir: Path
) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("DAEBUS_")}
    # Something answers where nothing configured looks first, as a Redis on 6379 would.
    env.update(DAEBUS_DEFAULT_REDIS_URL=private_redis.url, DAEBUS_RUNTIME_DIR=str(runtime_dir))

    def daebus(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "daebus.cli", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    demo = ServiceProcess(
        module="daebus.cli",
        args=["demo", "--keep-running"],
        redis_url=None,
        env=env,
        inherit_env=False,
        name="demo",
    )
    with demo:
        wait_for(
            lambda: "Press Ctrl-C to stop." in demo.stdout() or not demo.is_running(),
            timeout=30,
            message=lambda: f"the demo did not finish its exchange\n{demo.output()}",
        )
        assert "demo OK" in demo.stdout(), demo.output()
        assert "daebus call shop order" in demo.stdout()  # no --redis-url needed
        claim = live_claim(runtime_dir)
        assert claim is not None
        assert claim.pid == demo.pid
        assert claim.by == "daebus demo"

        status = daebus("server", "--status")
        assert f"claimed by daebus demo (pid {demo.pid})" in status.stdout, status.stdout
        called = daebus("call", "inventory", "stock", '{"item": "bolt"}')
        assert called.returncode == 0, called.stdout + called.stderr
        assert json.loads(called.stdout.splitlines()[-1]) == {"item": "bolt", "total": 6}
        client = redis.Redis.from_url(private_redis.url)
        try:
            assert subscriber_count(client, "inventory") == 0  # not on the "6379" server
        finally:
            client.close()
        assert demo.terminate(signal.SIGINT) == 0, demo.output()

    assert live_claim(runtime_dir) is None
    assert list((runtime_dir / CLAIMS_NAME).iterdir()) == []
    # The claim went with the demo: nothing configured finds the Redis again.
    after = daebus("call", "inventory", "stock", '{"item": "bolt"}')
    assert after.returncode == EXIT_NO_SERVICE, after.stdout + after.stderr
    assert private_redis.url.rsplit(":", 1)[0] in after.stderr


def test_a_claim_lasts_as_long_as_its_block(runtime_dir: Path) -> None:
    assert live_claim(runtime_dir) is None
    with claim_shared_server("a test", runtime_dir) as claim:
        assert live_claim(runtime_dir) == claim
        assert claim.pid == os.getpid()
    assert live_claim(runtime_dir) is None


def test_a_claim_of_a_dead_process_is_stale_and_removed(runtime_dir: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    folder = runtime_dir / CLAIMS_NAME
    folder.mkdir(mode=0o700)
    (folder / str(gone.pid)).write_text("1\ndaebus demo\n")
    (folder / "notes.txt").write_text("not a claim\n")
    assert live_claim(runtime_dir) is None
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="start times come from /proc")
def test_a_reused_pid_does_not_keep_a_claim_alive(runtime_dir: Path) -> None:
    folder = runtime_dir / CLAIMS_NAME
    folder.mkdir(mode=0o700)
    # This process lives, but it started at another time than the one the claim says.
    (folder / str(os.getpid())).write_text("1\ndaebus demo\n")
    assert live_claim(runtime_dir) is None
    assert not (folder / str(os.getpid())).exists()


def test_no_runtime_folder_holds_no_claim(tmp_path: Path) -> None:
    assert live_claim(tmp_path / "missing") is None
