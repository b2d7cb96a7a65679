"""Fixtures for talking to PyPI daebus 0.0.31, which runs only in its own virtualenv."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from _helpers import ServiceProcess, has_failed, unique_name
from _servers import skip_or_fail
from interop._legacy import (
    HERE,
    LEGACY_SERVICE,
    OUR_SERVICE,
    VENV_DIR,
    LegacyVenvError,
    ensure_legacy_venv,
    legacy_process,
)

_venv_result = pytest.StashKey[Path | str]()


def _prepare_legacy_venv(config: pytest.Config) -> Path | str:
    """Build or reuse the venv once per session; the path, or the error text."""
    if _venv_result not in config.stash:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        try:
            python, seconds, built = ensure_legacy_venv()
        except LegacyVenvError as exc:
            config.stash[_venv_result] = f"cannot set up the daebus 0.0.31 venv: {exc}"
        else:
            config.stash[_venv_result] = python
            if reporter is not None:
                verb = "built" if built else "reused"
                reporter.write_line(f"daebus 0.0.31 venv {verb} in {seconds:.1f}s: {VENV_DIR}")
    return config.stash[_venv_result]


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    # Build the venv before the first test runs, so the (network-bound) build does not
    # count against that test's timeout.
    if any(item.get_closest_marker("interop") for item in session.items):
        _prepare_legacy_venv(session.config)


@pytest.fixture(scope="session")
def legacy_python(pytestconfig: pytest.Config) -> Path:
    """The python of the virtualenv with PyPI daebus==0.0.31 (built or reused)."""
    result = _prepare_legacy_venv(pytestconfig)
    if isinstance(result, str):
        skip_or_fail(result)
    assert isinstance(result, Path)
    return result


def _serve(
    request: pytest.FixtureRequest, proc: ServiceProcess, service: str, *channels: str
) -> Iterator[str]:
    """Run `proc` until it listens on `service` and `channels`; yield the service name.

    At teardown the process is killed, and its output printed if the test failed.
    """
    with proc:
        for channel in (service, *channels):
            proc.wait_ready(channel)
        yield service
        if has_failed(request.node):
            proc.print_output("(the test failed)")


@pytest.fixture
def legacy_service(
    request: pytest.FixtureRequest, legacy_python: Path, redis_url: str
) -> Iterator[str]:
    """A running 0.0.31 `legacy_service.py`; yields its service name."""
    service = unique_name("interop-legacy")
    proc = legacy_process(
        legacy_python, LEGACY_SERVICE, service, redis_url=redis_url, name="legacy_service"
    )
    yield from _serve(request, proc, service, "interop.to_legacy")


@pytest.fixture
def our_service(request: pytest.FixtureRequest, redis_url: str) -> Iterator[str]:
    """A running `our_service.py` on our package; yields its service name."""
    service = unique_name("interop-ours")
    proc = ServiceProcess(
        OUR_SERVICE, args=(service,), redis_url=redis_url, cwd=HERE, name="our_service"
    )
    yield from _serve(request, proc, service, "interop.to_ours")
