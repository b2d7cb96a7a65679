"""``daebus dlq`` and ``daebus stats`` against a real server, through click's CliRunner.

The dead letters are made by a service running in the test: a durable listener that
raises on every try (two tries, a short backoff).
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import pytest
from click.testing import CliRunner, Result

from _apps import Apps
from _helpers import QUIET, dead_url, unique_name, wait_for
from daebus import Daebus, DeadLetters, broadcast
from daebus.cli import EXIT_FAILURE, EXIT_USAGE, cli

pytestmark = pytest.mark.timeout(60)


def invoke(*args: str, input: str | None = None) -> Result:
    """Run ``daebus ARGS`` in-process; an unexpected exception fails the test as it is."""
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


class Poisoned:
    """A service whose group ``flaky`` fails on every message of ``channel`` while
    ``broken`` is set, and whose group ``steady`` handles each one."""

    def __init__(self, apps: Apps, count: int) -> None:
        self.url = apps.url
        self.channel = unique_name("orders")
        self.broken = threading.Event()
        self.broken.set()
        self.flaky: list[Any] = []
        self.steady: list[Any] = []
        app = Daebus("poisoned")

        @app.listen(self.channel, durable=True, group="flaky", retries=1, backoff=0.01)
        def flaky(data: Any) -> None:
            if self.broken.is_set():
                raise ValueError(f"cannot digest order {data['n']}\nsecond line")
            self.flaky.append(data)

        @app.listen(self.channel, durable=True, group="steady")
        def steady(data: Any) -> None:
            self.steady.append(data)

        apps.start(app)
        os.environ["DAEBUS_REDIS_URL"] = self.url
        try:
            self.ids = [broadcast.send(self.channel, {"n": n}, durable=True) for n in range(count)]
        finally:
            del os.environ["DAEBUS_REDIS_URL"]
        with DeadLetters(self.channel, "flaky", redis_url=self.url) as letters:
            wait_for(lambda: letters.count() == count, message="no dead letters")
        wait_for(lambda: len(self.steady) == count, message=lambda: f"{self.steady}")

    def letters(self) -> list[Any]:
        with DeadLetters(self.channel, "flaky", redis_url=self.url) as letters:
            return letters.list()


@pytest.fixture
def poisoned(apps: Apps) -> Poisoned:
    return Poisoned(apps, 2)


def test_dlq_list_prints_a_table_with_the_error(poisoned: Poisoned) -> None:
    result = invoke("dlq", "list", poisoned.channel, "--redis-url", poisoned.url)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"{poisoned.channel} group flaky: 2 dead letters"
    assert lines[1].split() == ["ID", "MESSAGE", "ID", "TRIES", "AGE", "ERROR"]
    rows = {line.split()[1]: line for line in lines[2:]}
    assert set(rows) == set(poisoned.ids)
    row = rows[poisoned.ids[0]]
    assert row.split()[2] == "2"
    # The error is kept with its control characters escaped: one line.
    assert row.endswith("ValueError: cannot digest order 0\\nsecond line")


def test_dlq_list_json(poisoned: Poisoned) -> None:
    result = invoke("dlq", "list", poisoned.channel, "--json", "--redis-url", poisoned.url)
    assert result.exit_code == 0, result.output
    letters = json.loads(result.stdout)
    assert sorted(letter["message_id"] for letter in letters) == sorted(poisoned.ids)
    first = next(letter for letter in letters if letter["message_id"] == poisoned.ids[0])
    assert first["data"] == {"n": 0}
    assert first["group"] == "flaky"
    assert first["deliveries"] == 2
    assert first["error"] == "ValueError: cannot digest order 0\\nsecond line"


def test_dlq_list_without_a_channel_counts_every_queue(poisoned: Poisoned) -> None:
    result = invoke("dlq", "list", "--json", "--redis-url", poisoned.url)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {"channel": poisoned.channel, "group": "flaky", "count": 2} in rows
    text = invoke("dlq", "list", "--redis-url", poisoned.url).stdout
    assert any(line.split() == [poisoned.channel, "flaky", "2"] for line in text.splitlines())


def test_dlq_list_of_a_channel_without_dead_letters(redis_url: str) -> None:
    channel = unique_name("clean")
    result = invoke("dlq", "list", channel, "--redis-url", redis_url)
    assert result.exit_code == 0
    assert result.stdout == f"no dead letters on {channel!r}\n"


def test_dlq_replay_brings_the_message_back_to_its_group_only(poisoned: Poisoned) -> None:
    first = poisoned.letters()[0]
    poisoned.broken.clear()
    result = invoke(
        "dlq", "replay", poisoned.channel, "--id", first.id, "--redis-url", poisoned.url
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{first.id} -> ")
    assert "replayed 1 dead letter to group 'flaky'" in result.stderr
    wait_for(lambda: poisoned.flaky == [first.data], message=lambda: f"{poisoned.flaky}")
    assert [letter.id for letter in poisoned.letters()] != [first.id]
    assert len(poisoned.letters()) == 1
    time.sleep(QUIET)
    assert len(poisoned.steady) == 2  # the group that handled it does not run it again


def test_dlq_replay_all(poisoned: Poisoned) -> None:
    poisoned.broken.clear()
    args = ["dlq", "replay", poisoned.channel, "--group", "flaky", "--all"]
    result = invoke(*args, "--redis-url", poisoned.url)
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 2
    wait_for(lambda: len(poisoned.flaky) == 2, message=lambda: f"{poisoned.flaky}")
    assert poisoned.letters() == []


def test_dlq_replay_of_an_unknown_id_fails(poisoned: Poisoned) -> None:
    result = invoke("dlq", "replay", poisoned.channel, "--id", "1-0", "--redis-url", poisoned.url)
    assert result.exit_code == EXIT_FAILURE
    assert "not found: 1-0" in result.stderr
    assert len(poisoned.letters()) == 2


@pytest.mark.parametrize(
    "args", [[], ["--id", "1-0", "--all"], ["--id", "not-an-id"]], ids=["none", "both", "bad id"]
)
@pytest.mark.parametrize("command", ["replay", "purge"])
def test_dlq_needs_ids_or_all(poisoned: Poisoned, command: str, args: list[str]) -> None:
    result = invoke("dlq", command, poisoned.channel, *args, "--yes", "--redis-url", poisoned.url)
    assert result.exit_code == EXIT_USAGE, result.output
    assert len(poisoned.letters()) == 2


def test_dlq_purge_asks_first(poisoned: Poisoned) -> None:
    args = ["dlq", "purge", poisoned.channel, "--all", "--redis-url", poisoned.url]
    refused = invoke(*args, input="n\n")
    assert refused.exit_code == EXIT_FAILURE
    assert "Delete all 2 dead letters" in refused.stderr
    assert len(poisoned.letters()) == 2
    accepted = invoke(*args, input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert accepted.stdout == "deleted 2 dead letters\n"
    assert poisoned.letters() == []


def test_dlq_purge_by_id_with_yes(poisoned: Poisoned) -> None:
    first, second = poisoned.letters()
    args = ["dlq", "purge", poisoned.channel, "--id", first.id, "--yes"]
    result = invoke(*args, "--redis-url", poisoned.url)
    assert result.exit_code == 0, result.output
    assert result.stdout == "deleted 1 dead letter\n"
    assert poisoned.letters() == [second]


def test_dlq_needs_a_group_when_several_have_letters(apps: Apps) -> None:
    poisoned = Poisoned(apps, 1)
    with DeadLetters(poisoned.channel, "other", redis_url=apps.url) as other:
        other.admin.stream_add(
            other.key, {"data": b"1", "channel": poisoned.channel.encode(), "group": b"other"}
        )
    result = invoke("dlq", "purge", poisoned.channel, "--all", "--yes", "--redis-url", apps.url)
    assert result.exit_code == EXIT_FAILURE
    assert "several groups" in result.stderr
    assert "--group" in result.stderr


def test_stats_prints_each_group(poisoned: Poisoned) -> None:
    result = invoke("stats", poisoned.channel, "--redis-url", poisoned.url)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].endswith(": healthy")
    assert f"channel {poisoned.channel}: 2 messages" in lines
    assert "  group flaky: 1 consumers, 0 pending, lag 0, 2 dead letters" in lines
    assert "  group steady: 1 consumers, 0 pending, lag 0, 0 dead letters" in lines


def test_stats_json(poisoned: Poisoned) -> None:
    result = invoke("stats", poisoned.channel, "--json", "--redis-url", poisoned.url)
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["healthy"] is True
    assert stats["channels"][poisoned.channel]["groups"]["flaky"]["dead_letters"] == 2


def test_stats_of_a_server_that_is_down() -> None:
    url = dead_url()
    result = invoke("stats", "--redis-url", url, "--timeout", "1")
    assert result.exit_code == EXIT_FAILURE
    assert result.stderr.startswith(f"Error: Redis at {url} is not healthy: ")
    as_json = invoke("stats", "--json", "--redis-url", url)
    assert as_json.exit_code == EXIT_FAILURE
    assert json.loads(as_json.stdout)["healthy"] is False
