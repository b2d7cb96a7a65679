"""examples/testing/: a user's unit tests of their service, run as the user would run them."""

from __future__ import annotations

import os
import subprocess
import sys

from _helpers import EXAMPLES, ServiceProcess
from daebus import DaebusCaller

EXAMPLE = EXAMPLES / "testing"


def test_the_example_service_tests_pass_with_no_server() -> None:
    # A separate pytest: the example relies only on what installing daebus gives it, the
    # plugin's fixtures included (none of this test suite's conftest).
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("DAEBUS_REDIS_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_inventory.py"],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "6 passed" in output, output


def test_the_example_service_runs_on_a_real_server(redis_url: str) -> None:
    # What the unit tests promise holds on Redis too.
    with ServiceProcess(EXAMPLE / "inventory.py", redis_url=redis_url) as proc:
        proc.wait_ready("inventory")
        with DaebusCaller("inventory", redis_url=redis_url) as caller:
            caller.redis.delete("stock")
            assert caller.send_request("add", {"item": "tea", "quantity": 2}) == {
                "item": "tea",
                "stock": 2,
            }
            assert list(caller.stream("export")) == [{"item": "tea", "stock": 2}, {"items": 1}]
        assert proc.terminate() == 0
