"""Fixtures of the fault suite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from _helpers import has_failed
from _servers import RedisServer
from faults._rig import Rig


@pytest.fixture
def fault_rig(
    request: pytest.FixtureRequest,
    server_binary: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., Rig]]:
    """Make the test's `Rig`: ``fault_rig(password=None)``; all is stopped at teardown."""
    rigs: list[Rig] = []

    def make(password: str | None = None) -> Rig:
        server = RedisServer(server_binary, password=password).start()
        rig = Rig(server, tmp_path)
        rigs.append(rig)
        # The broadcaster is code outside any app: it finds its server in the environment.
        monkeypatch.setenv("DAEBUS_REDIS_URL", rig.url)
        rig.start()
        return rig

    yield make
    for rig in rigs:
        if has_failed(request.node):
            rig.process.print_output("(the test failed)")
        rig.process.close()
        if rig.server.is_paused():
            rig.server.resume()
        rig.server.close()
