"""Test helpers: polling against deadlines, logs, subscriptions, and services run as subprocesses.

The waits here never sleep a fixed time to let something happen: they poll an observable
condition against a deadline. ``wait_for`` blocks its thread; ``wait_until`` is the same
wait for ``async def`` tests, which must keep their own event loop running meanwhile. The
only fixed wait is `QUIET`, for checking that something does *not* happen.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, TypeVar

import pytest
import redis

from _servers import free_port

if TYPE_CHECKING:
    from daebus import Daebus

T = TypeVar("T")

#: How long a test watches to be sure something does *not* happen (a message already
#: delivered elsewhere, a handler still gated, a job that must not run again). Only ever
#: used for absence: anything a test expects to happen is waited for on a deadline.
QUIET = 0.2

#: The interval given to a background job so that it fires now (see `fire_now`).
FAST = 0.05

#: Reports of the setup/call/teardown phases, stored on each item by tests/conftest.py.
PHASE_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


def has_failed(node: pytest.Item) -> bool:
    """Whether setup or call of the test `node` failed (for fixtures deciding at teardown)."""
    reports = node.stash.get(PHASE_REPORTS, {})
    return any(report.failed for report in reports.values())


def unique_name(prefix: str) -> str:
    """A service or channel name no other test uses (channels are global on a server)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 5.0,
    interval: float = 0.01,
    message: str | Callable[[], str] = "condition was not met",
) -> T:
    """Call `predicate` until it returns something truthy, and return that value.

    Raises AssertionError with `message` if `timeout` seconds (monotonic) pass first;
    a callable `message` is called then, so it can show the state at the timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timed_out(timeout, message)
        time.sleep(min(interval, remaining))


async def wait_until(
    predicate: Callable[[], T],
    timeout: float = 5.0,
    interval: float = 0.01,
    message: str | Callable[[], str] = "condition was not met",
) -> T:
    """`wait_for` for ``async def`` tests: polls with ``await asyncio.sleep``.

    The test's own event loop (its clients, and any server running on it) keeps running
    between two looks. `predicate` must not block.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timed_out(timeout, message)
        await asyncio.sleep(min(interval, remaining))


def _timed_out(timeout: float, message: str | Callable[[], str]) -> AssertionError:
    text = message() if callable(message) else message
    return AssertionError(f"timed out after {timeout}s: {text}")


def dead_url() -> str:
    """The URL of a local port nothing listens on (free when asked)."""
    return f"redis://127.0.0.1:{free_port()}/0"


# -- logs (captured by the `logs` fixture in conftest.py) ---------------------------------


def log_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every captured record's message, from any thread, so far."""
    return [record.getMessage() for record in list(caplog.records)]


def count_logs(caplog: pytest.LogCaptureFixture, text: str) -> int:
    """How many captured records contain `text`."""
    return sum(text in message for message in log_messages(caplog))


def first_log(caplog: pytest.LogCaptureFixture, text: str) -> str | None:
    """The first captured record containing `text`, or None."""
    return next((m for m in log_messages(caplog) if text in m), None)


def wait_log(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 5.0) -> str:
    """Wait for a log record containing `text`; returns its message."""
    return wait_for(
        lambda: first_log(caplog, text),
        timeout=timeout,
        message=f"no log record containing {text!r}; got {log_messages(caplog)!r}",
    )


async def wait_until_log(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 5.0) -> str:
    """`wait_log` for ``async def`` tests."""
    return await wait_until(
        lambda: first_log(caplog, text),
        timeout=timeout,
        message=f"no log record containing {text!r}; got {log_messages(caplog)!r}",
    )


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """Make a one-day self-signed certificate for ``localhost`` with openssl.

    Returns the certificate's and the key's paths (``cert.pem``, ``key.pem`` in `directory`).
    """
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


#: Skips a test that needs `self_signed_certificate` where openssl is missing.
needs_openssl = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="no openssl to make a certificate"
)


def fire_now(app: Daebus, job: str) -> None:
    """Make a background job run every `FAST` seconds from now on (it reschedules at once)."""
    app.background_tasks[job].interval = FAST


def subscriber_count(client: redis.Redis, channel: str) -> int:
    """PUBSUB NUMSUB for one channel (SUBSCRIBE only; pattern subscribers are not counted)."""
    ((_, count),) = client.pubsub_numsub(channel)
    return int(count)


def wait_subscribed(url: str, channel: str, timeout: float = 10.0, count: int = 1) -> int:
    """Wait until `channel` has at least `count` subscribers on the server at `url`."""
    if count < 1:
        raise ValueError("count must be at least 1")
    client = redis.Redis.from_url(url)

    def enough() -> int:
        subscribers = subscriber_count(client, channel)
        return subscribers if subscribers >= count else 0

    try:
        return wait_for(
            enough,
            timeout=timeout,
            interval=0.02,
            message=f"fewer than {count} subscriber(s) on channel {channel!r}",
        )
    finally:
        client.close()


class Subscription:
    """A plain redis-py subscription, confirmed by the server before `__enter__` returns.

    Use it to watch what a service publishes without relying on the code under test::

        with Subscription(redis_url, "events") as sub:
            ...  # make something publish
            assert sub.get_json() == {"x": 1}
    """

    def __init__(self, url: str, *channels: str) -> None:
        if not channels:
            raise ValueError("subscribe to at least one channel")
        self.channels = channels
        self._client = redis.Redis.from_url(url)
        self._pubsub = self._client.pubsub()

    def __enter__(self) -> Subscription:
        self._pubsub.subscribe(*self.channels)
        # SUBSCRIBE is only in effect once the server has confirmed it; a publish sent
        # before that could be missed. There is one confirmation per channel.
        pending = set(self.channels)
        deadline = time.monotonic() + 10.0
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.close()
                raise AssertionError(f"no SUBSCRIBE confirmation for {sorted(pending)}")
            message = self._pubsub.get_message(timeout=remaining)
            if message is not None and message["type"] == "subscribe":
                pending.discard(_text(message["channel"]))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Unsubscribe and release both connections."""
        self._pubsub.close()
        self._client.close()

    def get(self, timeout: float = 5.0) -> tuple[str, bytes]:
        """The next message as ``(channel, data)``; AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no message on {list(self.channels)} within {timeout}s")
            message = self._pubsub.get_message(timeout=remaining)
            if message is not None and message["type"] == "message":
                return _text(message["channel"]), message["data"]

    def get_json(self, timeout: float = 5.0) -> Any:
        """The next message's data, JSON-decoded."""
        _, data = self.get(timeout)
        return json.loads(data)

    def get_json_matching(self, predicate: Callable[[Any], bool], timeout: float = 5.0) -> Any:
        """The first JSON message for which `predicate` holds, skipping the others."""
        deadline = time.monotonic() + timeout
        seen: list[Any] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching message within {timeout}s; saw {seen!r}")
            try:
                payload = self.get_json(remaining)
            except AssertionError:
                continue
            if predicate(payload):
                return payload
            seen.append(payload)


class ServiceProcess:
    """A Python program run in a subprocess that talks to the test Redis.

    Give exactly one of `script` (a file), `code` (``-c``) or `module` (``-m``). The child
    gets ``DAEBUS_REDIS_URL=<redis_url>``, unbuffered output, and its stdout and stderr go
    to files (see `output()`). As a context manager it starts the process, always kills it
    on exit, and prints the captured output when the block raised, so the failure report
    shows what the service said. With `redis_url=None` the child gets no
    ``DAEBUS_REDIS_URL`` at all: it finds its server as an unconfigured process does.
    """

    def __init__(
        self,
        script: str | os.PathLike[str] | None = None,
        *,
        code: str | None = None,
        module: str | None = None,
        args: Sequence[str] = (),
        redis_url: str | None,
        python: str | os.PathLike[str] = sys.executable,
        env: Mapping[str, str] | None = None,
        inherit_env: bool = True,
        cwd: str | os.PathLike[str] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        name: str | None = None,
    ) -> None:
        given = [x for x in (script, code, module) if x is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of script, code or module")
        if script is not None:
            target = [os.fspath(script)]
            default_name = Path(script).stem
        elif code is not None:
            target = ["-c", code]
            default_name = "code"
        else:
            assert module is not None
            target = ["-m", module]
            default_name = module
        self.name = name or default_name
        self.argv = [os.fspath(python), "-u", *target, *args]
        self.redis_url = redis_url
        self.cwd = cwd
        self.env = dict(os.environ) if inherit_env else {}
        if env:
            self.env.update(env)
        if redis_url is None:
            self.env.pop("DAEBUS_REDIS_URL", None)
        else:
            self.env["DAEBUS_REDIS_URL"] = redis_url
        self.env["PYTHONUNBUFFERED"] = "1"
        self._own_dir = log_dir is None
        self._dir = Path(log_dir or tempfile.mkdtemp(prefix=f"daebus-{self.name}-"))
        self.stdout_path = self._dir / f"{self.name}.stdout"
        self.stderr_path = self._dir / f"{self.name}.stderr"
        self._proc: subprocess.Popen[bytes] | None = None
        self._files: list[IO[bytes]] = []

    def __repr__(self) -> str:
        return f"<ServiceProcess {self.name} pid={self.pid} returncode={self.returncode}>"

    @property
    def pid(self) -> int | None:
        """The child's pid once started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit status (negative for a signal) once the child has exited, else None."""
        return self._proc.poll() if self._proc is not None else None

    def start(self) -> ServiceProcess:
        """Spawn the child process."""
        if self._proc is not None:
            raise RuntimeError(f"{self!r} was already started")
        stdout = self.stdout_path.open("wb")
        stderr = self.stderr_path.open("wb")
        self._files = [stdout, stderr]
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=self.env,
            cwd=self.cwd,
        )
        return self

    def is_running(self) -> bool:
        """Whether the child has been started and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def wait_ready(
        self, channel: str, timeout: float = 10.0, count: int = 1, *, url: str | None = None
    ) -> None:
        """Wait until `channel` has `count` subscribers, failing fast if the child dies.

        The server is `url`, else the child's `redis_url`.
        """
        url = url or self.redis_url
        if url is None:
            raise ValueError("the child has no redis_url: say which server to watch (url=)")
        client = redis.Redis.from_url(url)

        def ready() -> bool:
            if not self.is_running():
                raise AssertionError(
                    f"{self.name} exited with {self.returncode} before subscribing to "
                    f"{channel!r}\n{self.output()}"
                )
            return subscriber_count(client, channel) >= count

        try:
            wait_for(
                ready,
                timeout=timeout,
                interval=0.02,
                message=f"{self.name} did not subscribe to {channel!r}\n{self.output()}",
            )
        finally:
            client.close()

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the child to exit by itself and return its exit status.

        On timeout the child is killed and AssertionError is raised with its output.
        """
        proc = self._require_started()
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.name} did not exit within {timeout}s\n{self.output()}"
            ) from None

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send `sig` and wait for the exit; return the exit status.

        If the child is still alive after `timeout` it is killed and AssertionError raised.
        """
        proc = self._require_started()
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.name} ignored signal {signal.Signals(sig).name} for {timeout}s"
                f"\n{self.output()}"
            ) from None

    def kill(self) -> None:
        """SIGKILL the child (if alive) and reap it."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10.0)

    def stdout(self) -> str:
        """Everything the child wrote to stdout so far."""
        return _read(self.stdout_path)

    def stderr(self) -> str:
        """Everything the child wrote to stderr so far."""
        return _read(self.stderr_path)

    def output(self) -> str:
        """Both streams, labelled, for failure messages."""
        return (
            f"----- {self.name} stdout -----\n{self.stdout()}"
            f"----- {self.name} stderr -----\n{self.stderr()}"
            f"----- end of {self.name} output -----"
        )

    def close(self) -> None:
        """Kill the child if needed, close the capture files, and remove owned temp files."""
        self.kill()
        for f in self._files:
            f.close()
        self._files = []
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> ServiceProcess:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.kill()
            if exc_type is not None:
                self.print_output(f"the block raised {exc_type.__name__}")
        finally:
            self.close()

    def print_output(self, reason: str = "") -> None:
        """Print the captured output to stderr, where pytest's failure report shows it."""
        print(f"\n{self!r} {reason}".rstrip() + ":", file=sys.stderr)
        print(self.output(), file=sys.stderr)

    def _require_started(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RuntimeError(f"{self.name} was not started")
        return self._proc


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(relpath: str, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Import ``examples/<relpath>`` as a fresh module (its own app, its own state)."""
    path = EXAMPLES / relpath
    name = f"daebus_example_{path.stem}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module
