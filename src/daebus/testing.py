"""Unit-test a service without any server: run it on a private in-memory broker.

:func:`run_app` starts an app on a fresh ``memory://`` broker, in a thread of its own, and
gives a :class:`TestClient` that calls its actions, feeds its listeners and records what it
broadcasts. Everything the app does is real (dispatch, threads, jobs, hooks, ``cache``);
only the server is replaced by the in-process broker, which has Redis's semantics.

Example, from ``examples/testing/`` (``inventory.py`` is the service)::

    import pytest
    from daebus import RemoteError
    from daebus.testing import run_app

    from inventory import app


    def test_inventory():
        with run_app(app, service="inventory") as client:
            assert client.call("add", {"item": "tea", "quantity": 3})["stock"] == 3
            with pytest.raises(RemoteError, match="item is required"):
                client.call("add", {})
            assert client.stream("export") == [{"item": "tea", "stock": 3}, {"items": 1}]

            client.publish("orders:web", {"item": "tea", "quantity": 2})  # handled on return
            assert client.call("stock") == {"tea": 1}
            assert client.broadcasts.channels[-1] == "inventory:low"
            assert client.cache.hget("stock", "tea") == "1"

With pytest, daebus's plugin (:mod:`daebus.pytest_plugin`, installed with daebus) gives
the same as a fixture, which stops the app after the test::

    def test_add(daebus_client):
        client = daebus_client(app, service="inventory")
        assert client.call("add", {"item": "jam"}) == {"item": "jam", "stock": 1}

The cache needs fakeredis (``pip install "daebus[testing]"``). Blocking calls are fine
in ``async def`` tests too: the app and the replies run on other threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

from . import encoding, protocol
from .caller import DaebusCaller
from .exceptions import CallTimeoutError
from .transport._glob import glob_match
from .transport.memory import MemoryTransport, Published, broker_for, forget

if TYPE_CHECKING:
    from .app import Daebus
    from .runtime import ServiceRuntime

__all__ = ["Capture", "Message", "TestClient", "memory_url", "run_app"]


def memory_url(name: str | None = None) -> str:
    """A ``memory://`` URL: of the broker ``name``, else of a fresh, private one."""
    return f"memory://{name or 'daebus-test-' + uuid.uuid4().hex[:12]}"


@dataclass(frozen=True, slots=True)
class Message:
    """One message the app published."""

    channel: str
    data: bytes

    @property
    def payload(self) -> Any:
        """The data decoded from JSON; the raw bytes when it is not JSON."""
        try:
            return encoding.loads(self.data)
        except ValueError:
            return self.data


class Capture:
    """The messages an app publishes on channels matching a glob ``pattern``, in order.

    A list-like record that fills while the app runs: index it, iterate it, or
    :meth:`wait` for messages still to come. :meth:`close` (or the end of its ``with``
    block) stops the recording and keeps what it got.
    """

    def __init__(self, pattern: str = "*") -> None:
        self.pattern = pattern
        self._messages: list[Message] = []
        self._changed = threading.Condition()
        self._on_close: Callable[[], None] | None = None
        self.closed = False

    def __repr__(self) -> str:
        return f"<Capture {self.pattern!r}: {len(self)} message(s)>"

    def _offer(self, message: Message) -> None:
        if self.closed or (self.pattern != "*" and not glob_match(self.pattern, message.channel)):
            return
        with self._changed:
            self._messages.append(message)
            self._changed.notify_all()

    # -- reading ---------------------------------------------------------------------
    @property
    def messages(self) -> list[Message]:
        """The messages so far (a copy)."""
        with self._changed:
            return list(self._messages)

    @property
    def payloads(self) -> list[Any]:
        """The decoded data of each message so far (see :attr:`Message.payload`)."""
        return [message.payload for message in self.messages]

    @property
    def channels(self) -> list[str]:
        """The channel of each message so far."""
        return [message.channel for message in self.messages]

    def __len__(self) -> int:
        with self._changed:
            return len(self._messages)

    def __iter__(self) -> Iterator[Message]:
        return iter(self.messages)

    @overload
    def __getitem__(self, index: int) -> Message: ...

    @overload
    def __getitem__(self, index: slice) -> list[Message]: ...

    def __getitem__(self, index: int | slice) -> Message | list[Message]:
        return self.messages[index]

    def clear(self) -> None:
        """Forget the messages so far."""
        with self._changed:
            self._messages.clear()

    # -- waiting ---------------------------------------------------------------------
    def wait(self, count: int = 1, timeout: float = 5.0) -> list[Message]:
        """Wait until at least ``count`` messages were captured; return them all.

        Raises:
            AssertionError: fewer arrived within ``timeout`` seconds.
        """
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._messages) >= count, timeout):
                raise AssertionError(
                    f"{len(self._messages)} of {count} message(s) on {self.pattern!r} "
                    f"within {timeout}s: {self._messages!r}"
                )
            return list(self._messages)

    def wait_for(self, predicate: Callable[[Message], bool], timeout: float = 5.0) -> Message:
        """Wait for the first message (captured or to come) for which ``predicate`` holds.

        Raises:
            AssertionError: none within ``timeout`` seconds.
        """
        found: list[Message] = []

        def match() -> bool:
            found[:] = [m for m in self._messages if predicate(m)][:1]
            return bool(found)

        with self._changed:
            if not self._changed.wait_for(match, timeout):
                raise AssertionError(
                    f"no matching message on {self.pattern!r} within {timeout}s; "
                    f"saw {self._messages!r}"
                )
            return found[0]

    # -- lifetime --------------------------------------------------------------------
    def close(self) -> None:
        """Stop recording (idempotent); the messages stay."""
        self.closed = True
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class TestClient:
    """Runs an app on a ``memory://`` broker and talks to it, for tests.

    Args:
        app: the app under test; it is started by :meth:`start` (or ``with``) and
            stopped by :meth:`close`.
        service: the service name to run it as; defaults to ``app.name``.
        url: a ``memory://`` URL; several clients on one URL run apps that talk to each
            other. By default each client gets a private broker, dropped on close.
        timeout: seconds to wait for a reply, or for the app to become idle.
    """

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(
        self,
        app: Daebus,
        service: str | None = None,
        *,
        url: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        if url is not None and not url.lower().startswith("memory://"):
            raise ValueError(f"TestClient runs apps on memory:// brokers, not {url!r}")
        self.app = app
        self.service = service or app.name
        self.url = url or memory_url()
        self.timeout = timeout
        self.broker = broker_for(self.url)
        #: Everything the app published since :meth:`start`, replies excluded.
        self.broadcasts = Capture()
        #: The app's replies on ``<service>.responses``: the answers to requests sent
        #: without ``reply_to`` (by :meth:`send`, or a client publishing bare JSON).
        self._responses_channel = protocol.fallback_reply_channel(self.service) or ""
        self.responses = Capture(re.sub(r"([*?\[\]\\])", r"\\\1", self._responses_channel))
        self._owns_broker = url is None
        self._captures: list[Capture] = [self.broadcasts]
        self._callers: list[DaebusCaller] = []
        self._caller: DaebusCaller | None = None
        self._publisher = MemoryTransport(self.url)
        self._request_channels = {
            protocol.service_channel(self.service),
            protocol.workflow_channel(self.service),
        }
        self._reply_channels = {self._responses_channel}
        self._instances = protocol.instances_channel(self.service)
        self._stop_monitor: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"<TestClient {self.service!r} on {self.url}>"

    # -- lifetime --------------------------------------------------------------------
    def start(self) -> TestClient:
        """Start the app and return once it is subscribed and its start hooks ran."""
        if self._stop_monitor is not None:
            raise RuntimeError(f"{self!r} is already started")
        self._stop_monitor = self.broker.monitor(self._on_published)
        try:
            self.app.start(self.service, redis_url=self.url)
        except BaseException:
            self._stop_monitor()
            self._stop_monitor = None
            raise
        self._caller = self.caller()
        return self

    def close(self) -> None:
        """Stop the app (draining its work) and stop recording (idempotent)."""
        for caller in reversed(self._callers):
            caller.close()
        self._callers.clear()
        self._caller = None
        if self._stop_monitor is not None:
            self.app.stop()
            self._stop_monitor()
            self._stop_monitor = None
        for capture in list(self._captures):
            capture.close()
        self.responses.close()
        if self._owns_broker:
            forget(self.url)

    def __enter__(self) -> TestClient:
        if self._stop_monitor is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- requests --------------------------------------------------------------------
    def call(
        self,
        action: str,
        payload: Any = None,
        *,
        timeout: float | None = None,
        durable: bool = False,
    ) -> Any:
        """Call ``action`` as a caller would; return the final reply's payload.

        ``durable=True`` sends it as a durable request, through the app's request stream.

        Raises:
            RemoteError: the app answered with an error (or the handler raised).
            CallTimeoutError: no reply in time.
        """
        caller = self._require_caller()
        return caller.send_request(action, payload, timeout=timeout, durable=durable)

    def stream(
        self,
        action: str,
        payload: Any = None,
        *,
        timeout: float | None = None,
        durable: bool = False,
    ) -> list[Any]:
        """Call a streamed ``action``; return every part of the reply, the final one last.

        Raises:
            RemoteError: the app answered with an error (or the handler raised).
            CallTimeoutError: a part did not come in time.
        """
        caller = self._require_caller()
        return list(caller.stream(action, payload, timeout=timeout, durable=durable))

    def send(self, action: str, payload: Any = None, *, wait: bool = True) -> int:
        """Send a request without ``reply_to``; return the receiver count.

        The app answers it on ``<service>.responses``, as it does a client publishing
        bare JSON: see :attr:`responses`. With ``wait``, return only once the app has
        handled it (see :meth:`wait_idle`).
        """
        self._require_caller()
        data = protocol.encode_request(
            action, payload, None, protocol.new_request_id(), self.service
        )
        count = self._publisher.publish_blocking(protocol.service_channel(self.service), data)
        if wait:
            self.wait_idle()
        return count

    def caller(self, service: str | None = None) -> DaebusCaller:
        """A :class:`~daebus.DaebusCaller` on this broker (to ``service``, else the app's).

        It is closed with the client.
        """
        caller = DaebusCaller(service or self.service, redis_url=self.url, timeout=self.timeout)
        self._callers.append(caller)
        return caller.connect()

    def _require_caller(self) -> DaebusCaller:
        if self._caller is None:
            raise RuntimeError(f"{self!r} is not started: use it in a with block, or start()")
        return self._caller

    # -- broadcasts ------------------------------------------------------------------
    def publish(self, channel: str, data: Any, *, wait: bool = True) -> int:
        """Publish ``data`` (JSON-encoded unless bytes) on ``channel``; return the count.

        This is how a test feeds the app's listeners. With ``wait``, return only once the
        app has handled it (see :meth:`wait_idle`).
        """
        self._require_caller()
        raw = data if isinstance(data, bytes) else encoding.dumps(data)
        count = self._publisher.publish_blocking(channel, raw)
        if wait:
            self.wait_idle()
        return count

    def capture(self, pattern: str = "*") -> Capture:
        """Record what the app publishes from now on, on channels matching ``pattern``.

        Replies to requests are left out, as in :attr:`broadcasts`. Use it as a context
        manager to stop recording at the end of the block.
        """
        capture = Capture(pattern)
        self._captures.append(capture)
        capture._on_close = lambda: self._discard(capture)
        return capture

    def _discard(self, capture: Capture) -> None:
        with contextlib.suppress(ValueError):
            self._captures.remove(capture)

    def _on_published(self, published: Published) -> None:
        # Runs in the publishing thread, inside the broker's lock: record, nothing more.
        if published.channel in self._request_channels:
            reply_channel = _reply_channel(published.data)
            if reply_channel is not None:
                self._reply_channels.add(reply_channel)
            return
        app_transport = self.app.transport
        if app_transport is None or published.publisher is not app_transport:
            return
        if published.channel == self._responses_channel:
            self.responses._offer(Message(published.channel, published.data))
            return
        if published.channel in self._reply_channels or published.channel == self._instances:
            return  # replies, and the announcements of the app's instances
        message = Message(published.channel, published.data)
        for capture in tuple(self._captures):
            capture._offer(message)

    # -- the app ---------------------------------------------------------------------
    @property
    def cache(self) -> Any:
        """The app's ``cache``: a fakeredis client of this broker (needs fakeredis)."""
        return self.app.cache

    def wait_idle(self, timeout: float | None = None) -> None:
        """Wait until the app has handled every message published to it so far.

        That includes the messages its handlers published to it meanwhile. Background
        jobs and ``@app.thread`` tasks are not waited for.

        Raises:
            CallTimeoutError: the app was still busy after ``timeout`` seconds.
        """
        runtime = self.app._runtime
        if runtime is None:
            return
        wait = timeout or self.timeout
        future = asyncio.run_coroutine_threadsafe(_quiesce(runtime), runtime.loop)
        try:
            future.result(wait)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise CallTimeoutError(
                f"service {self.service!r} was still busy after {wait}s "
                f"({runtime.busy} handler(s) running)"
            ) from None


async def _quiesce(runtime: ServiceRuntime) -> None:
    transport = runtime.transport
    memory = transport if isinstance(transport, MemoryTransport) else None
    while True:
        if memory is not None:
            await memory.drained()
        if runtime.busy:
            await runtime.settle()
            continue
        # Checked on the loop, where the reader runs: nothing can slip in between.
        if memory is None or memory.idle:
            return


def _reply_channel(data: bytes) -> str | None:
    """Where the app answers this request (see :attr:`PubSubRequest.reply_channel`)."""
    try:
        message = protocol.decode_object(data)
    except protocol.BadMessageError:
        address = protocol.recover_reply_address(data)
        return address[0] if address is not None else None
    reply_to = message.get("reply_to")
    if isinstance(reply_to, str) and reply_to:
        return reply_to
    return protocol.fallback_reply_channel(message.get("service"))


@contextlib.contextmanager
def run_app(
    app: Daebus,
    service: str | None = None,
    *,
    url: str | None = None,
    timeout: float = 5.0,
) -> Iterator[TestClient]:
    """Run ``app`` on a ``memory://`` broker for the block; yield its :class:`TestClient`.

    Args:
        app: the app under test.
        service: the service name to run it as; defaults to ``app.name``.
        url: a ``memory://`` URL to share with other apps; a private broker by default.
        timeout: seconds to wait for a reply, or for the app to become idle.
    """
    with TestClient(app, service, url=url, timeout=timeout) as client:
        yield client
