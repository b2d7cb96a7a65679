"""systemd notifications: READY=1 once subscribed, STOPPING=1 on drain, WATCHDOG=1 pings.

systemd is played by a real unix datagram socket the test binds and names in
``$NOTIFY_SOCKET``, as systemd does for a unit of ``Type=notify``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import daebus._systemd
from _apps import Apps
from _helpers import EXAMPLES, ServiceProcess, unique_name
from daebus import Daebus, DaebusCaller
from daebus._systemd import Notifier

pytestmark = pytest.mark.timeout(60)


class FakeSystemd:
    """The notification socket of a unit: a bound datagram socket, read by the test."""

    def __init__(self, address: str, sock: socket.socket) -> None:
        self.address = address
        self.sock = sock

    def receive(self, timeout: float = 10.0) -> list[str]:
        """The next datagram's ``KEY=VALUE`` lines."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            raise AssertionError(f"systemd heard nothing within {timeout}s") from None
        return data.decode("utf-8").split("\n")

    def wait_for(self, line: str, timeout: float = 10.0) -> list[list[str]]:
        """Every datagram up to the one holding ``line``, that one included."""
        seen: list[list[str]] = []
        while not seen or line not in seen[-1]:
            seen.append(self.receive(timeout))
        return seen


@pytest.fixture
def systemd() -> Iterator[FakeSystemd]:
    # mkdtemp rather than tmp_path: a unix socket path must stay under ~100 bytes.
    folder = tempfile.mkdtemp(prefix="daebus-sd-")
    address = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    try:
        yield FakeSystemd(address, sock)
    finally:
        sock.close()
        shutil.rmtree(folder, ignore_errors=True)


SERVICE = """
from daebus import Daebus

app = Daebus("notified")

@app.action("echo")
def echo():
    return "echo"

@app.listen("{channel}")
def heard(data):
    pass

if __name__ == "__main__":
    app.run(service="{service}")
"""


def test_ready_comes_once_the_service_is_subscribed_and_stopping_on_sigterm(
    systemd: FakeSystemd, redis_url: str, tmp_path: Path
) -> None:
    service, channel = unique_name("sd"), unique_name("sd-events")
    script = tmp_path / "notified.py"
    script.write_text(textwrap.dedent(SERVICE.format(service=service, channel=channel)))
    client = redis.Redis.from_url(redis_url)
    with (
        ServiceProcess(script, redis_url=redis_url, env={"NOTIFY_SOCKET": systemd.address}) as proc,
        DaebusCaller(service, redis_url=redis_url, timeout=10) as caller,
    ):
        caller.connect()  # its reply channel is subscribed before READY=1 can arrive
        before = systemd.wait_for("READY=1")
        # Right at READY=1: the request channel and the listener are both subscribed.
        assert client.publish(channel, '"hello"') == 1
        assert caller.send_request("echo", {}) == "echo"
        assert any(line.startswith("STATUS=connecting to") for lines in before for line in lines)
        assert any(f"STATUS=serving '{service}'" in line for line in before[-1])
        assert proc.terminate(signal.SIGTERM) == 0, proc.output()
        stopping = systemd.wait_for("STOPPING=1")[-1]
        assert any(line.startswith("STATUS=stopping") for line in stopping)
    client.close()


def test_ready_at_an_abstract_socket(
    redis_url: str, apps: Apps, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique_name("daebus-sd")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        apps.start(Daebus("abstract"))
        heard = FakeSystemd("@" + name, sock).wait_for("READY=1")
        assert heard[-1][0] == "READY=1"
    finally:
        sock.close()


def test_watchdog_pings_while_the_service_runs(
    systemd: FakeSystemd, apps: Apps, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.address)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # a ping every 50 ms
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    app = Daebus("watched")
    apps.start(app)
    pings = 0
    while pings < 3:
        pings += systemd.receive() == ["WATCHDOG=1"]
    app.stop()
    systemd.wait_for("STOPPING=1")


def test_no_watchdog_for_another_pid_or_without_watchdog_usec() -> None:
    address = {"NOTIFY_SOCKET": "/run/nowhere"}
    assert Notifier.from_environment(address).watchdog is None
    assert Notifier.from_environment({**address, "WATCHDOG_USEC": "0"}).watchdog is None
    assert Notifier.from_environment({**address, "WATCHDOG_USEC": "soon"}).watchdog is None
    other = {**address, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.from_environment(other).watchdog is None
    mine = {**address, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_environment(mine).watchdog == 2.0
    assert Notifier.from_environment({"WATCHDOG_USEC": "4000000"}).watchdog is None


def test_a_watchdog_of_a_few_microseconds_does_not_spin_the_loop() -> None:
    # Pinging every half microsecond would keep a core busy; no unit can mean it.
    junk = {"NOTIFY_SOCKET": "/run/nowhere", "WATCHDOG_USEC": "1"}
    assert Notifier.from_environment(junk).watchdog == daebus._systemd.SHORTEST_PING


def test_nothing_happens_outside_systemd(apps: Apps, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # ignored without a socket
    made: list[object] = []

    def no_socket(*args: object) -> socket.socket:
        made.append(args)
        raise AssertionError("a socket was made outside systemd")

    # Only the notifier's own name for the module: the service's connections need sockets.
    fake = types.SimpleNamespace(socket=no_socket, AF_UNIX=0, SOCK_DGRAM=0)
    monkeypatch.setattr(daebus._systemd, "socket", fake)
    notifier = Notifier.from_environment()
    assert not notifier.enabled
    assert notifier.watchdog is None
    assert notifier.notify("READY=1") is False
    app = Daebus("unnotified")
    app.add_action("ping", lambda: "pong")
    service = apps.start(app)
    assert apps.caller(service).send_request("ping", {}, timeout=5) == "pong"
    app.stop()
    assert made == []


def test_a_socket_that_is_gone_is_a_warning_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(str(tmp_path / "gone"))
    assert notifier.notify("READY=1") is False
    assert notifier.notify("STOPPING=1") is False
    warnings = [r for r in caplog.records if "cannot notify systemd" in r.getMessage()]
    assert len(warnings) == 1


# -- the example unit ------------------------------------------------------------------

EXAMPLE = EXAMPLES / "systemd"


def test_the_example_unit_asks_for_notify_a_watchdog_and_restarts() -> None:
    lines = (EXAMPLE / "daebus-example.service").read_text().splitlines()
    settings = [line for line in lines if line and not line.startswith("#")]
    for wanted in ("Type=notify", "Restart=on-failure", "NotifyAccess=main"):
        assert wanted in settings
    assert any(line.startswith("WatchdogSec=") for line in settings)
    (exec_start,) = [line for line in settings if line.startswith("ExecStart=")]
    assert exec_start.endswith("daebus run /opt/sensor/sensor_service.py")


def test_the_example_service_under_a_fake_systemd(systemd: FakeSystemd, redis_url: str) -> None:
    # What the unit's ExecStart runs, with the environment systemd gives it.
    env = {"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "200000"}
    with (
        ServiceProcess(
            module="daebus.cli",
            args=["run", str(EXAMPLE / "sensor_service.py"), "--log-format", "json"],
            redis_url=redis_url,
            env=env,
            name="sensor",
        ) as proc,
        DaebusCaller("sensor", redis_url=redis_url, timeout=10) as caller,
    ):
        systemd.wait_for("READY=1")
        assert caller.send_request("read", {"unit": "fahrenheit"}) == {
            "value": 70.7,
            "unit": "fahrenheit",
        }
        assert caller.send_request("uptime", {})["pid"] == proc.pid
        systemd.wait_for("WATCHDOG=1")
        assert proc.terminate(signal.SIGTERM) == 0, proc.output()
        systemd.wait_for("STOPPING=1")
        assert all(line.startswith("{") for line in proc.stderr().splitlines()), proc.output()
