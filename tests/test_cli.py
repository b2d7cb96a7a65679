"""The ``daebus`` command against a real server: every command, its output and exit codes.

Commands that return run in-process through click's CliRunner; those that run until a
signal (``run``, ``listen``, ``demo --keep-running``), and the streamed output of
``call``, run as real subprocesses. Every command is given ``--redis-url`` of a test
server: nothing here may reach a Redis on localhost:6379. The commands with nothing
configured (``daebus demo``, ``daebus run``) are in test_zero_setup.py.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result

import daebus
from _apps import Apps
from _helpers import ServiceProcess, Subscription, dead_url, unique_name, wait_for
from _servers import RedisServer, free_port
from daebus import Daebus, request, response
from daebus.cli import (
    EXIT_ERROR_REPLY,
    EXIT_FAILURE,
    EXIT_NO_SERVICE,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    cli,
    load_app,
)

#: A listen line: time of arrival, channel, message.
LINE = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) (\S+) (.*)$")


def invoke(*args: str, input: str | bytes | None = None, **options: Any) -> Result:
    """Run ``daebus ARGS`` in-process; an unexpected exception fails the test as it is."""
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False, **options)


def daebus_process(*args: str, url: str, **options: Any) -> ServiceProcess:
    """``python -m daebus.cli ARGS --redis-url URL`` as a subprocess (not started)."""
    return ServiceProcess(
        module="daebus.cli",
        args=[*args, "--redis-url", url],
        redis_url=url,
        name=f"daebus-{args[0]}",
        **options,
    )


def stdout_lines(process: ServiceProcess, count: int, timeout: float = 10.0) -> list[str]:
    """Wait until the process has printed at least ``count`` lines on stdout."""
    return wait_for(
        lambda: (lines := process.stdout().splitlines()) and len(lines) >= count and lines,
        timeout=timeout,
        message=f"{process.name} printed fewer than {count} lines\n{process.output()}",
    )


def wait_stderr(process: ServiceProcess, text: str, timeout: float = 10.0) -> None:
    """Wait until the process has written ``text`` on stderr."""
    wait_for(
        lambda: text in process.stderr(),
        timeout=timeout,
        message=f"{process.name} never said {text!r}\n{process.output()}",
    )


# -- the group -------------------------------------------------------------------------


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"daebus, version {daebus.__version__}\n"


def test_the_installed_script_runs() -> None:
    script = Path(sys.executable).with_name("daebus")
    if not script.exists():
        pytest.skip(f"no {script}: install the package (pip install -e .) to get the script")
    done = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"daebus, version {daebus.__version__}"


@pytest.mark.parametrize(
    "command",
    [
        "run",
        "call",
        "publish",
        "listen",
        "demo",
        "stats",
        "dlq list",
        "dlq replay",
        "dlq purge",
        "dashboard",
    ],
)
def test_every_command_has_help_and_redis_url(command: str) -> None:
    result = invoke(*command.split(), "--help")
    assert result.exit_code == 0
    assert f"Usage: daebus {command}" in result.stdout
    assert "--redis-url" in result.stdout
    assert command.split()[0] in invoke("--help").stdout


def test_call_help_imports_neither_the_demo_nor_redis_py() -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "daebus.cli", "call", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "Usage: daebus call" in done.stdout
    # -X importtime writes a line per module imported: "... |   <spaces><name>".
    imported = {line.rpartition("|")[2].strip() for line in done.stderr.splitlines()}
    assert "click" in imported  # the listing is what it is thought to be
    assert "daebus.demo" not in imported
    assert "redis" not in imported


def test_call_help_documents_the_exit_codes() -> None:
    text = invoke("call", "--help").stdout
    for code in (EXIT_FAILURE, EXIT_USAGE, EXIT_ERROR_REPLY, EXIT_TIMEOUT, EXIT_NO_SERVICE):
        assert re.search(rf"^\s+{code}\s+\S", text, re.MULTILINE), text


def test_colour_only_without_no_color(redis_url: str) -> None:
    channel = unique_name("nobody")
    coloured = invoke("publish", channel, "1", "--redis-url", redis_url, color=True)
    assert coloured.exit_code == 0
    assert "\x1b[" in coloured.stderr
    plain = invoke(
        "publish", channel, "1", "--redis-url", redis_url, color=True, env={"NO_COLOR": "1"}
    )
    assert plain.exit_code == 0
    assert "\x1b[" not in plain.stderr
    assert "nobody is listening" in plain.stderr


# -- daebus call -----------------------------------------------------------------------


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event handlers wait on; set at teardown so that no handler outlives its test."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def service(apps: Apps, release: threading.Event) -> str:
    """A running service with the actions the call tests need; returns its name."""
    app = Daebus("cli-target")

    @app.action("echo")
    def echo() -> Any:
        return request.payload

    @app.action("count")
    def count() -> Any:
        for i in range(3):
            response.send({"part": i}, final=False)
        return {"parts": 3}

    @app.action("held")
    def held() -> Any:
        response.send({"part": "first"}, final=False)
        return {"released": release.wait(10)}

    @app.action("fail")
    def fail() -> Any:
        raise ValueError("the warehouse is on fire")

    return apps.start(app)


def test_call_prints_the_reply_as_json(redis_url: str, service: str) -> None:
    result = invoke(
        "call", service, "echo", '{"item": "gizmo", "n": [1, 2]}', "--redis-url", redis_url
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"item": "gizmo", "n": [1, 2]}
    assert result.stderr == ""


def test_call_durable_goes_through_the_request_stream(redis_url: str, service: str) -> None:
    result = invoke("call", service, "echo", '{"n": 1}', "--durable", "--redis-url", redis_url)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"n": 1}
    nobody = invoke(
        "call", f"{service}-nobody", "echo", "--durable", "-t", "0.5", "--redis-url", redis_url
    )
    assert nobody.exit_code == 4
    assert "no instance" in nobody.stderr


def test_call_payload_defaults_to_an_empty_object(redis_url: str, service: str) -> None:
    result = invoke("call", service, "echo", "--redis-url", redis_url)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {}


def test_call_reads_the_payload_from_stdin(redis_url: str, service: str) -> None:
    result = invoke("call", service, "echo", "-", "--redis-url", redis_url, input='[1, "two"]')
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [1, "two"]


def test_call_prints_each_part_then_the_reply(redis_url: str, service: str) -> None:
    result = invoke("call", service, "count", "--redis-url", redis_url)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines == [{"part": 0}, {"part": 1}, {"part": 2}, {"parts": 3}]


def test_call_on_a_terminal_labels_parts_and_indents_the_reply(
    redis_url: str, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("daebus.cli._options.is_terminal", lambda: True)
    result = invoke("call", service, "count", "--redis-url", redis_url)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:3] == [f'part {i + 1}: {{"part": {i}}}' for i in range(3)]
    assert result.stdout.endswith('{\n  "parts": 3\n}\n')


def test_call_prints_a_part_before_the_reply_exists(
    redis_url: str, service: str, release: threading.Event
) -> None:
    # The handler sends a part and then waits for `release`, which is only set once the
    # part has been read from the command's stdout: it cannot have been held back.
    with daebus_process("call", service, "held", url=redis_url) as proc:
        first = stdout_lines(proc, 1)
        assert json.loads(first[0]) == {"part": "first"}
        assert not release.is_set()
        release.set()
        assert proc.wait() == 0, proc.output()
        lines = proc.stdout().splitlines()
    assert [json.loads(line) for line in lines] == [{"part": "first"}, {"released": True}]


def test_call_error_reply_exits_3(redis_url: str, service: str) -> None:
    result = invoke("call", service, "fail", "--redis-url", redis_url)
    assert result.exit_code == EXIT_ERROR_REPLY
    assert result.stdout == ""
    assert "the warehouse is on fire" in result.stderr
    assert "Traceback" not in result.output


def test_call_unknown_action_is_an_error_reply(redis_url: str, service: str) -> None:
    result = invoke("call", service, "no-such-action", "--redis-url", redis_url)
    assert result.exit_code == EXIT_ERROR_REPLY
    assert "no-such-action" in result.stderr


def test_call_timeout_exits_4(redis_url: str, service: str) -> None:
    started = time.monotonic()
    result = invoke("call", service, "held", "--timeout", "0.3", "--redis-url", redis_url)
    elapsed = time.monotonic() - started
    assert result.exit_code == EXIT_TIMEOUT, result.output
    assert "no reply within 0.3s" in result.stderr
    assert elapsed < 5
    # The part came before the timeout and was printed; the reply never came.
    assert [json.loads(line) for line in result.stdout.splitlines()] == [{"part": "first"}]


def test_call_with_no_service_listening_exits_5(redis_url: str) -> None:
    name = unique_name("nobody")
    started = time.monotonic()
    result = invoke("call", name, "anything", "--redis-url", redis_url)
    assert result.exit_code == EXIT_NO_SERVICE
    assert f"no service {name!r} is listening" in result.stderr
    assert time.monotonic() - started < 5  # told at once, not after the timeout


@pytest.mark.parametrize(
    "args",
    [
        ["call", "svc", "act", "{not json"],
        ["call", "svc", "act", "-"],
        ["publish", "channel", "not json"],
    ],
    ids=["call", "call-stdin", "publish"],
)
def test_bad_json_is_a_usage_error(args: list[str], redis_url: str) -> None:
    result = invoke(*args, "--redis-url", redis_url, input="{also not json")
    assert result.exit_code == EXIT_USAGE
    assert "not valid JSON" in result.stderr
    assert "Usage:" in result.stderr


@pytest.mark.parametrize("timeout", ["0", "-1", "soon"])
def test_call_timeout_must_be_positive(timeout: str, redis_url: str) -> None:
    result = invoke("call", "svc", "act", "--timeout", timeout, "--redis-url", redis_url)
    assert result.exit_code == EXIT_USAGE


@pytest.mark.parametrize(
    "args",
    [["call", "svc", "act"], ["publish", "channel", "{}"], ["listen", "channel.*"], ["demo"]],
)
def test_an_unreachable_server_is_a_prompt_clear_error(args: list[str]) -> None:
    url = dead_url()
    started = time.monotonic()
    result = invoke(*args, "--redis-url", url)
    elapsed = time.monotonic() - started
    assert result.exit_code == EXIT_FAILURE
    assert result.stderr.startswith(f"Error: Redis at {url}: ")
    assert "Traceback" not in result.output
    assert elapsed < 5


def test_an_unsupported_url_is_a_clear_error() -> None:
    commands = [
        ["call", "svc", "act"],
        ["publish", "channel", "{}"],
        ["listen", "c"],
        ["run", "daebus.demo:shop"],
        ["demo"],
    ]
    for args in commands:
        result = invoke(*args, "--redis-url", "ftp://example.invalid/")
        assert result.exit_code == EXIT_FAILURE
        assert result.stderr.startswith("Error: bad "), result.stderr
        assert "ftp://example.invalid/" in result.stderr


def test_a_url_option_the_transport_would_ignore_is_a_clear_error() -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0?client_name=svc"
    for args in (["call", "svc", "act"], ["publish", "channel", "{}"], ["listen", "c"]):
        result = invoke(*args, "--redis-url", url)
        assert result.exit_code == EXIT_FAILURE
        assert result.stderr.startswith("Error: bad server URL: "), result.stderr
        assert "'client_name' is not supported" in result.stderr
        assert "hunter2" not in result.stderr


# -- daebus publish --------------------------------------------------------------------


def test_publish_prints_the_receiver_count(redis_url: str) -> None:
    channel = unique_name("events")
    with Subscription(redis_url, channel) as first, Subscription(redis_url, channel) as second:
        result = invoke(
            "publish", channel, '{"event": "counted", "n": 6}', "--redis-url", redis_url
        )
        assert result.exit_code == 0, result.output
        assert result.stdout == "2\n"
        assert first.get_json() == second.get_json() == {"event": "counted", "n": 6}


def test_publish_reads_stdin(redis_url: str) -> None:
    channel = unique_name("events")
    with Subscription(redis_url, channel) as sub:
        result = invoke("publish", channel, "-", "--redis-url", redis_url, input='{"a": 1}')
        assert result.exit_code == 0, result.output
        assert sub.get_json() == {"a": 1}


def test_publish_raw_sends_the_bytes_as_given(redis_url: str) -> None:
    channel = unique_name("events")
    with Subscription(redis_url, channel) as sub:
        assert (
            invoke("publish", channel, "not json", "--raw", "--redis-url", redis_url).stdout
            == "1\n"
        )
        assert sub.get(timeout=5) == (channel, b"not json")
        result = invoke(
            "publish", channel, "-", "--raw", "--redis-url", redis_url, input=b"\xff\x00bin"
        )
        assert result.exit_code == 0, result.output
        assert sub.get(timeout=5) == (channel, b"\xff\x00bin")


def test_publish_with_no_receiver_says_so(redis_url: str) -> None:
    result = invoke("publish", unique_name("nobody"), "{}", "--redis-url", redis_url)
    assert result.exit_code == 0
    assert result.stdout == "0\n"
    assert "nobody is listening" in result.stderr


def test_a_service_listener_receives_a_published_message(apps: Apps, redis_url: str) -> None:
    app = Daebus("cli-listener")
    channel = unique_name("orders")
    heard: list[Any] = []

    @app.listen(f"{channel}.*")
    def on_order(data: Any) -> None:
        heard.append(data)

    apps.start(app)
    result = invoke("publish", f"{channel}.new", '{"id": 7}', "--redis-url", redis_url)
    assert result.stdout == "1\n"
    wait_for(lambda: heard == [{"id": 7}], message=f"the listener heard {heard}")


# -- daebus listen ---------------------------------------------------------------------


def test_listen_prints_each_message_with_its_channel_until_ctrl_c(redis_url: str) -> None:
    prefix = unique_name("watch")
    exact = unique_name("exact")
    client = redis.Redis.from_url(redis_url)
    try:
        with daebus_process("listen", f"{prefix}.*", exact, url=redis_url) as proc:
            wait_stderr(proc, "listening on")
            assert client.publish(f"{prefix}.one", json.dumps({"n": 1, "text": "é"})) == 1
            assert client.publish(f"{unique_name('other')}.one", b"unseen") == 0
            assert client.publish(exact, b"plain text") == 1
            assert client.publish(f"{prefix}.bin", b"\xff\x00") == 1
            assert client.publish(f"{prefix}.lines", b"two\nlines") == 1
            lines = stdout_lines(proc, 4)
            assert proc.terminate(signal.SIGINT) == 0, proc.output()
    finally:
        client.close()
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [(m[2], m[3]) for m in parsed if m] == [
        (f"{prefix}.one", '{"n": 1, "text": "é"}'),
        (exact, "plain text"),
        (f"{prefix}.bin", r"b'\xff\x00'"),
        (f"{prefix}.lines", r"'two\nlines'"),
    ]


def test_listen_stops_cleanly_on_sigterm(redis_url: str) -> None:
    with daebus_process("listen", unique_name("watch"), url=redis_url) as proc:
        wait_stderr(proc, "listening on")
        assert proc.terminate(signal.SIGTERM) == 0, proc.output()


def test_listen_reconnects_after_the_server_restarts(private_redis: RedisServer) -> None:
    channel = unique_name("watch")
    url = private_redis.url
    with daebus_process("listen", channel, url=url) as proc:
        wait_stderr(proc, "listening on")
        private_redis.restart()
        wait_stderr(proc, "reconnected")
        client = redis.Redis.from_url(url)
        try:
            assert client.publish(channel, b'"after the restart"') == 1
        finally:
            client.close()
        (line,) = stdout_lines(proc, 1)
        assert line.endswith(f' {channel} "after the restart"')
        assert proc.terminate(signal.SIGINT) == 0, proc.output()


def test_listen_notices_a_server_that_stops_answering(private_redis: RedisServer) -> None:
    channel = unique_name("watch")
    with daebus_process("listen", channel, url=private_redis.url) as proc:
        wait_stderr(proc, "listening on")
        private_redis.pause()  # SIGSTOP: the connection stays open, nothing answers
        try:
            # Asked after 4 s of silence, given up on 5 s after the last answer.
            wait_stderr(proc, "no answer for", timeout=20)
        finally:
            private_redis.resume()
        wait_stderr(proc, "reconnected", timeout=20)
        assert proc.terminate(signal.SIGINT) == 0, proc.output()


# -- daebus run ------------------------------------------------------------------------

SERVICE_MODULE = """
from daebus import Daebus, request

app = Daebus("{name}")

@app.action("echo")
def echo():
    return {{"echo": request.payload, "service": "{name}"}}
"""


def test_run_serves_the_app_until_sigterm(redis_url: str, tmp_path: Path) -> None:
    module = unique_name("svc").replace("-", "_")
    service = unique_name("run")
    (tmp_path / f"{module}.py").write_text(SERVICE_MODULE.format(name=module))
    with daebus_process(
        "run", f"{module}:app", "--service", service, url=redis_url, cwd=tmp_path
    ) as proc:
        proc.wait_ready(service)
        result = invoke("call", service, "echo", '{"x": 1}', "--redis-url", redis_url)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {"echo": {"x": 1}, "service": module}
        assert proc.terminate(signal.SIGTERM) == 0, proc.output()


LOOP_MODULE = """
import asyncio
from daebus import Daebus

app = Daebus("{name}")

@app.action("loop")
async def loop():
    return type(asyncio.get_running_loop()).__module__.split(".")[0]
"""


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_run_takes_the_event_loop_to_run_on(redis_url: str, tmp_path: Path, loop: str) -> None:
    pytest.importorskip("uvloop")
    module = unique_name("loops").replace("-", "_")
    service = unique_name("run-loop")
    (tmp_path / f"{module}.py").write_text(LOOP_MODULE.format(name=module))
    with daebus_process(
        "run", module, "--service", service, "--loop", loop, url=redis_url, cwd=tmp_path
    ) as proc:
        proc.wait_ready(service)
        result = invoke("call", service, "loop", "--redis-url", redis_url)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == loop
        assert proc.terminate(signal.SIGTERM) == 0, proc.output()


def test_run_refuses_an_unknown_event_loop(redis_url: str) -> None:
    result = invoke("run", "daebus.demo:shop", "--loop", "trio", "--redis-url", redis_url)
    assert result.exit_code == 2
    assert "'trio' is not one of 'auto', 'uvloop', 'asyncio'" in result.output


def test_run_defaults_the_service_name_to_the_apps(redis_url: str, tmp_path: Path) -> None:
    module = unique_name("svc").replace("-", "_")
    (tmp_path / f"{module}.py").write_text(SERVICE_MODULE.format(name=module))
    with daebus_process("run", module, url=redis_url, cwd=tmp_path) as proc:
        proc.wait_ready(module)
        assert proc.terminate(signal.SIGINT) == 0, proc.output()


@pytest.fixture
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Work in tmp_path, and forget the modules and sys.path entries the test adds."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def write_module(directory: Path, source: str) -> str:
    name = unique_name("mod").replace("-", "_")
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return name


def test_load_app_finds_the_app(in_tmp_path: Path) -> None:
    named_app = write_module(in_tmp_path, "from daebus import Daebus\napp = Daebus('a')\n")
    assert load_app(named_app).name == "a"
    only_one = write_module(in_tmp_path, "from daebus import Daebus\nservice = Daebus('b')\n")
    assert load_app(only_one).name == "b"
    several = write_module(
        in_tmp_path,
        """
        from daebus import Daebus
        class Holder:
            app = Daebus('c')
        one, two = Daebus('d'), Daebus('e')
        alias = one
        """,
    )
    assert load_app(f"{several}:two").name == "e"
    assert load_app(f"{several}:Holder.app").name == "c"
    assert load_app(f"{in_tmp_path / several}.py:one").name == "d"


@pytest.mark.parametrize(
    ("source", "target", "message"),
    [
        (None, "no_such_module_anywhere", "cannot import 'no_such_module_anywhere'"),
        (None, "no_such_file.py", "no such file: no_such_file.py"),
        ("", "{module}:app", "has no attribute 'app'"),
        ("app = 42\n", "{module}:app", "is a int, not a Daebus app"),
        ("x = 1\n", "{module}", "has no Daebus app"),
        ("from daebus import Daebus\na, b = Daebus('a'), Daebus('b')\n", "{module}", "several"),
    ],
    ids=["missing-module", "missing-file", "missing-attribute", "not-an-app", "no-app", "two"],
)
def test_run_explains_what_it_cannot_find(
    in_tmp_path: Path, redis_url: str, source: str | None, target: str, message: str
) -> None:
    module = write_module(in_tmp_path, source) if source is not None else ""
    result = invoke("run", target.format(module=module), "--redis-url", redis_url)
    assert result.exit_code == EXIT_FAILURE
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_run_lets_an_error_in_the_module_itself_show(in_tmp_path: Path, redis_url: str) -> None:
    # A module that fails to import one of *its* dependencies is a bug to see in full.
    module = write_module(in_tmp_path, "import no_such_dependency_of_the_module\n")
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_of_the_module"):
        invoke("run", module, "--redis-url", redis_url)


# -- daebus demo -----------------------------------------------------------------------


def test_demo_shows_the_exchange(redis_url: str) -> None:
    result = invoke("demo", "--redis-url", redis_url)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.count("part:") == 3
    assert out.index("part:") < out.index('reply: {"item": "gizmo", "total": 6}')
    assert 'reply: {"item": "widget", "in_stock": 6, "warehouses": 3}' in out
    assert "heard on inventory.events" in out
    assert out.rstrip().endswith("demo OK")
    # It can run again in the same process.
    assert invoke("demo", "--redis-url", redis_url).exit_code == 0


def test_demo_keep_running_serves_until_ctrl_c(private_redis: RedisServer) -> None:
    url = private_redis.url
    with daebus_process("demo", "--keep-running", url=url) as proc:
        wait_for(
            lambda: "Press Ctrl-C to stop." in proc.stdout(),
            timeout=20,
            message=f"the demo did not finish its exchange\n{proc.output()}",
        )
        assert "demo OK" in proc.stdout()
        result = invoke("call", "shop", "order", '{"item": "bolt"}', "--redis-url", url)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {"item": "bolt", "in_stock": 6, "warehouses": 3}
        assert proc.terminate(signal.SIGINT) == 0, proc.output()


# -- daebus server ---------------------------------------------------------------------
def test_server_status_stop_and_a_second_foreground_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from daebus.server import SharedServer

    monkeypatch.setenv("DAEBUS_RUNTIME_DIR", str(tmp_path))
    shared = SharedServer(tmp_path)
    try:
        result = invoke("server", "--status")
        assert result.exit_code == 0
        assert result.output.startswith("not running")
        status = shared.ensure()
        result = invoke("server", "--status")
        assert result.output.strip() == f"running at {status.url} (pid {status.pid})"
        # A second server in the foreground is refused while one runs.
        result = invoke("server")
        assert result.exit_code == 1
        assert "already running" in result.output
        result = invoke("server", "--stop")
        assert result.output.strip() == f"stopped pid {status.pid}"
        assert not shared.status().running
    finally:
        shared.stop()


# -- passwords are never shown ---------------------------------------------------------

PASSWORD = "S3cret-pw-never-shown"
WRONG_PASSWORD = "Wr0ng-pw-never-shown"


@pytest.fixture
def locked_redis(private_redis: RedisServer) -> RedisServer:
    """A server of the test's own that requires `PASSWORD`."""
    client = redis.Redis.from_url(private_redis.url)
    try:
        client.config_set("requirepass", PASSWORD)
    finally:
        client.close()
    return private_redis


def with_password(url: str, password: str) -> str:
    return url.replace("redis://", f"redis://:{password}@", 1)


def assert_no_password(text: str) -> None:
    assert PASSWORD not in text, text
    assert WRONG_PASSWORD not in text, text


@pytest.mark.parametrize(
    ("args", "server", "exit_code"),
    [
        (["call", "svc", "act"], "wrong password", EXIT_FAILURE),
        (["call", "svc", "act"], "down", EXIT_FAILURE),
        (["call", unique_name("nobody"), "act"], "right password", EXIT_NO_SERVICE),
        (["publish", "channel", "{}"], "wrong password", EXIT_FAILURE),
        (["publish", "channel", "{}"], "down", EXIT_FAILURE),
        (["listen", "channel.*"], "wrong password", EXIT_FAILURE),
        (["listen", "channel.*"], "down", EXIT_FAILURE),
        (["demo"], "wrong password", EXIT_FAILURE),
        (["run", "daebus.demo:shop"], "bad URL", EXIT_FAILURE),
        (["dlq", "list", "channel"], "wrong password", EXIT_FAILURE),
        (["dlq", "purge", "channel", "--all", "--yes"], "down", EXIT_FAILURE),
        (["stats"], "wrong password", EXIT_FAILURE),
        (["stats"], "down", EXIT_FAILURE),
    ],
)
@pytest.mark.parametrize("given", ["--redis-url", "$DAEBUS_REDIS_URL"])
def test_errors_do_not_show_the_password(
    locked_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
    args: list[str],
    server: str,
    exit_code: int,
    given: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="daebus")
    url = {
        "right password": with_password(locked_redis.url, PASSWORD),
        "wrong password": with_password(locked_redis.url, WRONG_PASSWORD),
        "down": with_password(dead_url(), PASSWORD),
        "bad URL": f"ftp://:{PASSWORD}@example.invalid/",
    }[server]
    if given == "--redis-url":
        result = invoke(*args, "--redis-url", url)
    else:
        result = invoke(*args, env={"DAEBUS_REDIS_URL": url})
    assert result.exit_code == exit_code, result.output
    assert result.stderr.startswith("Error: "), result.output
    assert_no_password(result.output)
    assert_no_password(caplog.text)


def test_listen_does_not_show_the_password(locked_redis: RedisServer) -> None:
    url = with_password(locked_redis.url, PASSWORD)
    with daebus_process("listen", "channel.*", url=url) as proc:
        wait_stderr(proc, "listening on channel.* at redis://:***@")
        assert proc.terminate(signal.SIGINT) == 0, proc.output()
        assert_no_password(proc.output())
