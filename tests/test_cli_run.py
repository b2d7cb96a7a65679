"""``daebus run FILE`` behaves as ``python FILE``, and logs as JSON lines when asked.

A file that starts its own app keeps the service name its own ``app.run(service=...)``
gives (seed 000's ``system_monitor``), and one SIGTERM stops it; a file that only
defines an app is served as before. Every process here is a real subprocess on the
session's test server.
"""

from __future__ import annotations

import json
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest

from _helpers import ServiceProcess, unique_name, wait_for
from daebus import DaebusCaller

pytestmark = pytest.mark.timeout(60)

# Seed 000's first example, as written: the service's name is in its own run() call.
SELF_RUNNING = """
from daebus import Daebus, request

app = Daebus(__name__)

@app.action("get_status")
def get_status():
    return {{"status": "healthy", "who": request.payload.get("who"), "name": __name__}}

if __name__ == "__main__":
    app.run(service="{service}")
    print("run returned", flush=True)
"""

# Seed 000's blueprint example: run() at module level, no __main__ guard.
MODULE_LEVEL_RUN = """
from daebus import Daebus

app = Daebus("users")
app.add_action("get_user", lambda: {{"id": "u7"}})
app.run(service="{service}")
"""

DEFINES_ONLY = """
from daebus import Daebus

app = Daebus(__name__)
app.add_action("ping", lambda: "pong")
"""

FAILING = """
from daebus import Daebus

app = Daebus("failing")

@app.action("fail")
def fail():
    raise RuntimeError("boom")

if __name__ == "__main__":
    app.run(service="{service}")
"""


def daebus_run(script: Path, *args: str, url: str, **options: Any) -> ServiceProcess:
    """``python -m daebus.cli run SCRIPT ARGS --redis-url URL`` (not started)."""
    return ServiceProcess(
        module="daebus.cli",
        args=["run", str(script), *args, "--redis-url", url],
        redis_url=url,
        name=f"daebus-run-{script.stem}",
        **options,
    )


def write(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


def call(url: str, service: str, action: str, payload: Any = None) -> Any:
    with DaebusCaller(service, redis_url=url, timeout=10) as caller:
        return caller.send_request(action, payload or {})


def test_a_file_that_runs_its_app_keeps_the_name_it_gives(redis_url: str, tmp_path: Path) -> None:
    service = unique_name("system_monitor")
    script = write(tmp_path, "monitor", SELF_RUNNING.format(service=service))
    with daebus_run(script, url=redis_url) as proc:
        proc.wait_ready(service)
        reply = call(redis_url, service, "get_status", {"who": "me"})
        assert reply == {"status": "healthy", "who": "me", "name": "__main__"}
        # One SIGTERM stops it: the app is not started again under the file's name.
        assert proc.terminate(signal.SIGTERM) == 0, proc.output()
        assert "run returned" in proc.stdout()
        assert "'monitor'" not in proc.stderr()


@pytest.mark.parametrize("as_module", [False, True])
def test_a_module_level_run_is_served_once(redis_url: str, tmp_path: Path, as_module: bool) -> None:
    service = unique_name("user_service")
    script = write(tmp_path, "blueprints", MODULE_LEVEL_RUN.format(service=service))
    target = Path("blueprints") if as_module else script  # imported, or run as __main__
    with daebus_run(target, url=redis_url, cwd=tmp_path) as proc:
        proc.wait_ready(service)
        assert call(redis_url, service, "get_user") == {"id": "u7"}
        assert proc.terminate(signal.SIGTERM) == 0, proc.output()


def test_a_file_whose_path_has_a_colon_or_a_space_is_run_as_a_file(
    redis_url: str, tmp_path: Path
) -> None:
    service = unique_name("odd_path")
    folder = tmp_path / "at 10:30"  # not MODULE:APP
    folder.mkdir()
    script = write(folder, "my service", SELF_RUNNING.format(service=service))
    with daebus_run(script, url=redis_url) as proc:
        proc.wait_ready(service)
        assert call(redis_url, service, "get_status")["status"] == "healthy"
        assert proc.terminate(signal.SIGTERM) == 0, proc.output()


def test_the_command_line_service_applies_to_the_files_own_run(
    redis_url: str, tmp_path: Path
) -> None:
    given, renamed = unique_name("given"), unique_name("renamed")
    script = write(tmp_path, "renamed", SELF_RUNNING.format(service=given))
    with daebus_run(script, "--service", renamed, url=redis_url) as proc:
        proc.wait_ready(renamed)
        assert call(redis_url, renamed, "get_status")["status"] == "healthy"
        assert proc.terminate(signal.SIGINT) == 0, proc.output()


def test_a_file_that_only_defines_an_app_is_served_under_the_files_name(
    redis_url: str, tmp_path: Path
) -> None:
    stem = unique_name("defines").replace("-", "_")
    script = write(tmp_path, stem, DEFINES_ONLY)
    with daebus_run(script, url=redis_url) as proc:
        proc.wait_ready(stem)
        assert call(redis_url, stem, "ping") == "pong"
        assert proc.terminate(signal.SIGTERM) == 0, proc.output()


def json_lines(process: ServiceProcess) -> list[dict[str, Any]]:
    """stderr's lines, each of which must be one JSON object."""
    return [json.loads(line) for line in process.stderr().splitlines() if line.strip()]


def wait_json_line(process: ServiceProcess, text: str) -> dict[str, Any]:
    """The first JSON log line whose message holds ``text``."""

    def found() -> dict[str, Any] | None:
        return next((line for line in json_lines(process) if text in line["message"]), None)

    line = wait_for(
        found, timeout=10, message=lambda: f"no log line says {text!r}\n{process.output()}"
    )
    assert line is not None
    return line


@pytest.mark.parametrize("how", ["option", "environment"])
def test_logs_are_json_lines_when_asked(redis_url: str, tmp_path: Path, how: str) -> None:
    service = unique_name("json-logs")
    script = write(tmp_path, "failing", FAILING.format(service=service))
    if how == "option":
        proc = daebus_run(script, "--log-format", "json", url=redis_url)
    else:
        proc = ServiceProcess(script, redis_url=redis_url, env={"DAEBUS_LOG_FORMAT": "json"})
    with proc:
        proc.wait_ready(service)
        with pytest.raises(Exception, match="boom"):
            call(redis_url, service, "fail")
        started = wait_json_line(proc, "started as instance")
        assert started["level"] == "INFO"
        assert started["logger"] == "daebus.app"
        assert started["service"] == service
        assert started["instance"].count(":") == 2
        assert started["time"].endswith("Z")
        failed = wait_json_line(proc, "fail")
        assert "RuntimeError: boom" in failed["exception"]
        assert failed["service"] == service
        assert proc.terminate(signal.SIGTERM) == 0, proc.output()
        # Every line of the run, to the last one, is JSON.
        assert any("stopped" in line["message"] for line in json_lines(proc))
