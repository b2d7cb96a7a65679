"""The :class:`Daebus` app: what a service registers, and how it runs and stops."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from . import _launch, _systemd, config, context
from ._compat import timeout as deadline
from ._logging import configure_for_run, enable_debug_logging
from ._registry import Registry
from ._standalone import standalone_publisher
from ._telemetry import Telemetry
from ._thread_tasks import ThreadTasks
from .blueprint import Blueprint
from .components import Component
from .exceptions import SetupError, TransportError
from .pubsub import DEFAULT_MAX_MESSAGE_SIZE, Publisher, PubSubBroadcast, ReceiverCounts
from .runtime import ServiceRuntime, loop as _loop
from .runtime.instances import new_instance_id
from .transport import Transport, transport_from_url
from .transport._url import redact_url

if TYPE_CHECKING:
    import redis

    from .runtime.jobs import BackgroundTask

__all__ = ["Daebus"]

C = TypeVar("C", bound=Component)

log = logging.getLogger("daebus.app")

_RETRY_DELAY_MAX = 1.0
_REPORT_EVERY = 10.0


class Daebus(Registry, ThreadTasks, Telemetry):
    """A service: actions, listeners, background jobs, threads and hooks on one Redis.

    Args:
        name: names the app's logger (``daebus.<name>``); the service's channel is the
            ``service`` given to :meth:`run`.
        max_workers: threads running plain ``def`` handlers.
        max_in_flight: messages handled at once; defaults to four per worker. Later
            ones wait in a queue, in the order they came.
        max_queued: requests that may wait for a slot; defaults to ten times
            ``max_in_flight``. One more is refused at once, unrun, with a busy error
            reply (``ServiceBusyError`` for callers), instead of waiting out its
            caller's timeout.
        max_queued_bytes: bytes of the requests and broadcasts that may wait for a
            slot, each counted with 100 bytes more; defaults to ``4 * max_message_size``
            (32 MiB, the Redis server's own limit for a subscriber). Past it a request
            is refused as above, and a broadcast is dropped: listeners have fallen
            behind. A warning, at most one per channel every 10 s, counts the drops.
        max_message_size: largest request, reply or broadcast in bytes.
        shutdown_timeout: seconds a stop waits for in-flight handlers and threads.
        reply_channels: glob patterns (Redis's ``PSUBSCRIBE`` dialect) of more channels
            a request's ``reply_to`` may name, e.g. ``["myapp.replies.*"]``. Replies
            always may go to ``caller:*`` (daebus's callers), ``caller_*`` and
            ``<service>.responses``, and never to a channel the service listens on.
            A request whose ``reply_to`` is anything else is not run; a warning says so.

    The service keeps reading its Redis connection whatever its load: were it to stop,
    the server would queue for it and, past its output-buffer limit for subscribers
    (32 MB by default), drop the connection and everything queued, unannounced.
    """

    def __init__(
        self,
        name: str,
        max_workers: int = 10,
        *,
        max_in_flight: int | None = None,
        max_queued: int | None = None,
        max_queued_bytes: int | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        shutdown_timeout: float = 10.0,
        reply_channels: Iterable[str] = (),
    ) -> None:
        super().__init__()
        if max_workers < 1:
            raise SetupError("max_workers must be at least 1")
        if (max_queued is not None and max_queued < 0) or (
            max_queued_bytes is not None and max_queued_bytes < 0
        ):
            raise SetupError("max_queued and max_queued_bytes must be 0 or more")
        if isinstance(reply_channels, str) or not all(
            isinstance(glob, str) and glob for glob in reply_channels
        ):
            raise SetupError("reply_channels must be a list of glob patterns")
        self.name = name
        self.max_workers = max_workers
        self.max_in_flight = max_in_flight or max_workers * 4
        self.max_queued = self.max_in_flight * 10 if max_queued is None else max_queued
        self.max_queued_bytes = (
            4 * max_message_size if max_queued_bytes is None else max_queued_bytes
        )
        self.max_message_size = max_message_size
        self.shutdown_timeout = shutdown_timeout
        self.reply_channels = list(reply_channels)
        self.logger = logging.getLogger(f"daebus.{name}")
        self.service: str | None = None
        #: This run's id among the instances of its service, ``<host>:<pid>:<random>``,
        #: shown in its log lines (None before the first run).
        self.instance_id: str | None = None
        self.debug = False
        self.broadcast = PubSubBroadcast(app=self)
        #: name -> thread of each started ``@thread`` task (0.0.31's attribute).
        self.threads: dict[str, threading.Thread] = {}
        self.http: Any = None
        self.websocket: Any = None
        #: The attached components, in the order of attachment. Internal; see components.
        self._components: list[Component] = []
        self._running = False
        # Held from the first line of serve() to its last: a second serve(), from another
        # thread or task, is refused even before the first has made its runtime.
        self._serving = threading.Lock()
        self._runtime: ServiceRuntime | None = None
        self._stop_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._signals = 0

    def __repr__(self) -> str:
        state = f"running as {self.service!r}" if self._running else "stopped"
        return f"<Daebus {self.name!r} {state}>"

    # -- per-message state, read from the current context ----------------------------
    @property
    def request(self) -> Any:
        """The request of the message this thread or task is handling (None outside one)."""
        ctx = context.current_context()
        return ctx.request if ctx is not None and ctx.app is self else None

    @property
    def response(self) -> Any:
        """The response of the message this thread or task is handling (None outside one)."""
        ctx = context.current_context()
        return ctx.response if ctx is not None and ctx.app is self else None

    @property
    def cache(self) -> redis.Redis | None:
        """The service's Redis client (redis-py, ``decode_responses=True``); None before run."""
        runtime = self._runtime
        if runtime is None:
            return None
        return runtime.transport.blocking_client()

    @property
    def redis(self) -> redis.Redis | None:
        """Alias of :attr:`cache` (0.0.31's attribute)."""
        return self.cache

    @property
    def thread_pool(self) -> Any:
        """The worker pool running plain ``def`` handlers (None when not running)."""
        return self._runtime.executor if self._runtime is not None else None

    @property
    def redis_url(self) -> str | None:
        """The URL of the server the running service uses."""
        return self._runtime.transport.url if self._runtime is not None else None

    @property
    def transport(self) -> Transport | None:
        """The transport of the running service."""
        return self._runtime.transport if self._runtime is not None else None

    def is_running(self) -> bool:
        """True from start until the service begins to stop."""
        return self._running

    # -- registration that also works while running ----------------------------------
    def add_listener(
        self, channel: str, func: Callable[..., Any], *, ordered: bool = False, **durable: Any
    ) -> None:
        """Register a listener; while running, the channel is subscribed at once.

        ``durable``: the options of a durable listener (see :meth:`listen`).
        """
        super().add_listener(channel, func, ordered=ordered, **durable)
        if durable.get("durable"):
            self._call_in_loop(_refresh_durable)
        else:
            self._call_in_loop(functools.partial(_subscribe_listener, channel=channel))

    def remove_listener(self, channel: str, func: Callable[..., Any] | None = None) -> bool:
        """Remove a listener (all of ``channel``'s if ``func`` is None); see the registry.

        While running, the channel is unsubscribed once its last listener is gone;
        messages already read for it are dropped.
        """
        durable = len(self._durable)
        removed = super().remove_listener(channel, func)
        if removed and channel not in self._listeners:
            self._call_in_loop(functools.partial(_unsubscribe_listener, channel=channel))
        if len(self._durable) != durable:
            self._call_in_loop(_refresh_durable)
        return removed

    def _background_added(self, task: BackgroundTask) -> None:
        """While running, a background job is scheduled as soon as it is registered."""
        runtime = self._runtime
        if runtime is not None:
            runtime.loop.call_soon_threadsafe(runtime.schedule, task)

    def add_thread(self, name: str, func: Callable[..., Any], auto_start: bool = True) -> None:
        """Register a thread task; while running, an auto-start task starts at once."""
        super().add_thread(name, func, auto_start)
        if self._running and auto_start:
            self.start_thread(name)

    def _call_in_loop(self, make: Callable[[ServiceRuntime], Any]) -> None:
        runtime = self._runtime
        if runtime is None:
            return
        if threading.get_ident() == runtime.loop_thread:
            runtime.keep(runtime.loop.create_task(make(runtime)))
        else:
            asyncio.run_coroutine_threadsafe(make(runtime), runtime.loop).result(10)

    def add_route(self, path: str, methods: list[str] | None, func: Callable[..., Any]) -> None:
        """Register an HTTP route; an attached ``DaebusHttp`` serves it at once."""
        super().add_route(path, methods, func)
        self._handlers_changed()

    def add_socket_handler(self, message_type: str, func: Callable[..., Any]) -> None:
        """Register a WebSocket handler; an attached ``DaebusWebSocket`` uses it at once."""
        super().add_socket_handler(message_type, func)
        self._handlers_changed()

    def _handlers_changed(self) -> None:
        # Components pick up app.routes / app.socket_handlers whenever they change, so
        # the order of attach(), route() and register_blueprint() does not matter.
        for component in self._components:
            component.refresh_handlers(self)

    # -- composition -----------------------------------------------------------------
    @property
    def components(self) -> tuple[Component, ...]:
        """The attached components, in the order they were attached."""
        return tuple(self._components)

    def attach(self, component: C) -> C:
        """Attach a component (``DaebusHttp``, ``DaebusWebSocket``); returns it.

        The component lives and dies with the app from then on: see
        :class:`daebus.components.Component` for what the app calls, and when.

        Raises:
            TypeError: ``component`` lacks a method of the Component protocol.
        """
        unchecked: object = component  # from code that mypy did not check, maybe
        if not isinstance(unchecked, Component):
            missing = [
                name
                for name in ("attach", "refresh_handlers", "start_async", "stop_async")
                if not callable(getattr(component, name, None))
            ]
            raise TypeError(
                f"{type(component).__name__} cannot be attached: it has no "
                f"{', '.join(f'{name}()' for name in missing)} (see daebus.components)"
            )
        component.attach(self)
        self._components.append(component)
        self._handlers_changed()
        return component

    def register_blueprint(self, blueprint: Blueprint) -> Daebus:
        """Copy a blueprint's handlers into the app; on a name clash the blueprint wins.

        Its listeners join those the app has on the same channels. The blueprint
        refuses registrations from then on: they would not reach the app.
        """
        blueprint._registered = True
        tables: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
            ("action", blueprint.action_handlers, self.action_handlers),
            ("workflow", blueprint.workflow_handlers, self.workflow_handlers),
        ]
        for kind, source, target in tables:
            for key, func in source.items():
                if key in target and target[key] is not func:
                    log.warning("blueprint %r replaces the app's %s %r", blueprint.name, kind, key)
        for name, func in blueprint.action_handlers.items():
            self.action_handlers[name] = func
        for channel, listeners in list(blueprint._listeners.items()):
            for listener in listeners:
                self.add_listener(
                    channel, listener.func, ordered=listener.ordered, shared=listener.shared
                )
        for durable in blueprint._durable.values():
            self.add_listener(
                durable.channel,
                durable.func,
                durable=True,
                group=durable.group,
                retries=durable.retries,
                backoff=durable.backoff,
                min_idle_time=durable.min_idle_time,
                start=durable.start,
                ordered=durable.ordered,
                key=durable.key,
            )
        self.workflow_handlers.update(blueprint.workflow_handlers)
        for task in blueprint.background_tasks:
            if task.name in self.background_tasks:
                log.warning(
                    "blueprint %r replaces the background task %r", blueprint.name, task.name
                )
            self.add_background(*task, shared=task.shared, lease=task.lease)
        for name, thread_task in blueprint.thread_tasks.items():
            if name in self.thread_tasks:
                log.warning("blueprint %r replaces the thread %r", blueprint.name, name)
            self.add_thread(name, thread_task.func, thread_task.auto_start)
        self._on_start_handlers.extend(blueprint._on_start_handlers)
        self._on_stop_handlers.extend(blueprint._on_stop_handlers)
        self.routes.extend(blueprint.routes)
        self.health_checks.update(blueprint.health_checks)
        for message_type, func in blueprint.socket_handlers.items():
            if self.socket_handlers.get(message_type, func) is not func:
                log.warning(
                    "blueprint %r replaces the socket handler %r", blueprint.name, message_type
                )
            self.socket_handlers[message_type] = func
        self._handlers_changed()
        return self

    # -- publishing for broadcast ----------------------------------------------------
    def _publisher(self) -> Publisher:
        runtime = self._runtime
        if runtime is not None:
            return runtime.publisher
        return standalone_publisher()

    def _publish_many(self, messages: list[tuple[str, bytes]]) -> ReceiverCounts:
        runtime = self._runtime
        if runtime is None:
            return standalone_publisher().publish_many(messages)
        if runtime.metrics is not None:
            runtime.metrics.published("broadcast", len(messages))
        if threading.get_ident() == runtime.loop_thread:
            return asyncio.ensure_future(runtime.transport.publish_many(messages))
        return asyncio.run_coroutine_threadsafe(
            runtime.transport.publish_many(messages), runtime.loop
        ).result()

    # -- running ---------------------------------------------------------------------
    def run(
        self,
        service: str,
        debug: bool = False,
        redis_host: str | None = None,
        redis_port: int | None = None,
        *,
        redis_url: str | None = None,
    ) -> None:
        """Run the service until SIGTERM or SIGINT, then stop cleanly and return.

        Redis is ``redis_url``, else ``redis_host``/``redis_port``, else
        ``$DAEBUS_REDIS_URL``, else localhost:6379. ``debug=True`` logs every message.
        If logging is not configured yet, it is set up to print to stderr.
        """
        # Under `daebus run FILE`, the command's options apply to the file's own call.
        service, debug, redis_url = _launch.run_options(service, debug, redis_url)
        configure_for_run(debug)
        handle_signals = threading.current_thread() is threading.main_thread()
        _loop.run(
            self.serve(
                service,
                debug=debug,
                redis_host=redis_host,
                redis_port=redis_port,
                redis_url=redis_url,
                handle_signals=handle_signals,
            )
        )

    def start(
        self,
        service: str,
        *,
        redis_url: str | None = None,
        redis_host: str | None = None,
        redis_port: int | None = None,
        debug: bool = False,
        ready_timeout: float = 30.0,
    ) -> None:
        """Run the service on a background thread; return once it is subscribed and ready.

        Stop it with :meth:`stop`. Handy in tests and when embedding a service.
        """
        if self._thread is not None and self._thread.is_alive():
            raise SetupError(f"app {self.name!r} is already running")
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            try:
                _loop.run(
                    self.serve(
                        service,
                        debug=debug,
                        redis_url=redis_url,
                        redis_host=redis_host,
                        redis_port=redis_port,
                        on_ready=ready.set,
                    )
                )
            except BaseException as exc:
                failure.append(exc)
                ready.set()

        self._thread = threading.Thread(target=main, name=f"daebus-app-{service}", daemon=True)
        self._thread.start()
        if not ready.wait(ready_timeout):
            self.stop()
            raise TransportError(f"service {service!r} was not ready within {ready_timeout}s")
        if failure:
            raise failure[0]

    def stop(self, timeout: float | None = None) -> None:
        """Stop the service (from any thread): drain in-flight work, stop threads, close.

        Blocks until it has stopped when the service runs on another thread.
        """
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(event.set)
        current = context.current_context()
        if current is not None and current.app is self:
            return  # called from one of our own handlers: waiting would wait for itself
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout if timeout is not None else self.shutdown_timeout + 5)

    async def serve(
        self,
        service: str,
        *,
        redis_url: str | None = None,
        redis_host: str | None = None,
        redis_port: int | None = None,
        debug: bool = False,
        handle_signals: bool = False,
        on_ready: Callable[[], Any] | None = None,
    ) -> None:
        """Run the service on the current event loop until :meth:`stop` (or a signal)."""
        if not isinstance(service, str) or not service:
            raise SetupError("service must be a non-empty string")
        if not self._serving.acquire(blocking=False):
            raise SetupError(f"app {self.name!r} is already running")
        try:
            await self._serve(
                service, redis_url, redis_host, redis_port, debug, handle_signals, on_ready
            )
        finally:
            self._serving.release()

    async def _serve(
        self,
        service: str,
        redis_url: str | None,
        redis_host: str | None,
        redis_port: int | None,
        debug: bool,
        handle_signals: bool,
        on_ready: Callable[[], Any] | None,
    ) -> None:
        _launch.note_served()
        if redis_url or redis_host is not None or redis_port is not None:
            url = config.resolve_redis_url(redis_url, redis_host, redis_port)
        else:  # may probe localhost or start the shared server: not on the loop
            url = await asyncio.to_thread(config.resolve_redis_url)
        self.service = service
        self.debug = debug
        if debug:
            enable_debug_logging()
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop_event = asyncio.Event()
        self._signals = 0
        if handle_signals:
            self._install_signal_handlers(loop)
        # Not shared with callers: back-pressure pauses this connection's reader, and a
        # caller waiting on it for a reply would then wait for ever.
        transport = transport_from_url(url)
        notifier = _systemd.Notifier.from_environment()  # does nothing outside systemd
        try:
            notifier.start_watchdog(loop)
            notifier.status(f"connecting to {redact_url(url)}")
            if not await self._connect(transport):
                return
            self._running = True
            self.instance_id = new_instance_id()
            runtime = self._runtime = ServiceRuntime(self, service, transport, self.instance_id)
            context._register_running(self)
            try:
                await runtime.start()
                for component in self._components:
                    await component.start_async(self)
                log.info("service %r started as instance %s", service, self.instance_id)
                # Every subscription is in place and every component started: a request
                # sent once systemd says "started" is answered.
                notifier.ready(f"serving {service!r} as instance {self.instance_id}")
                if on_ready is not None:
                    on_ready()
                await self._stop_event.wait()
                log.info("service %r stopping", service)
            finally:
                self._running = False
                notifier.stopping(f"stopping {service!r}: draining in-flight work")
                for component in reversed(self._components):
                    try:
                        await component.stop_async()
                    except Exception:
                        log.exception("stopping %r failed", component)
                await runtime.shutdown(self.shutdown_timeout)
                context._unregister_running(self)
                self._runtime = None
                log.info("service %r stopped (instance %s)", service, self.instance_id)
        finally:
            self._running = False
            notifier.close()
            await transport.close()
            if handle_signals:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    with contextlib.suppress(NotImplementedError, RuntimeError):
                        loop.remove_signal_handler(signum)
            self._loop = None

    async def _connect(self, transport: Transport) -> bool:
        """Connect, retrying until Redis answers; False if asked to stop meanwhile."""
        assert self._stop_event is not None
        delay = 0.05
        first_failure: float | None = None
        last_report = 0.0
        while not self._stop_event.is_set():
            try:
                await transport.connect()
            except TransportError as exc:
                now = time.monotonic()
                if first_failure is None:
                    first_failure = last_report = now
                    log.warning("waiting for Redis: %s (retrying)", exc)
                elif now - last_report >= _REPORT_EVERY:
                    last_report = now
                    log.warning("still waiting for Redis after %.0fs: %s", now - first_failure, exc)
                with contextlib.suppress(asyncio.TimeoutError):
                    async with deadline(delay):
                        await self._stop_event.wait()
                delay = min(delay * 2, _RETRY_DELAY_MAX)
                continue
            if first_failure is not None:
                log.warning("Redis at %s is reachable now", redact_url(transport.url))
            return True
        return False

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, self._on_signal, signum)
            except (NotImplementedError, RuntimeError):
                signal.signal(signum, lambda s, _f: loop.call_soon_threadsafe(self._on_signal, s))

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            log.info("received %s; stopping (send it again to stop at once)", name)
            if self._stop_event is not None:
                self._stop_event.set()
            return
        log.warning("received %s again; abandoning in-flight work", name)
        runtime = self._runtime
        if runtime is not None:
            for task in list(runtime.in_flight):
                task.cancel()
            self.shutdown_timeout = 0.0


def _subscribe_listener(runtime: ServiceRuntime, *, channel: str) -> Any:
    return runtime.subscribe_listener(channel)


def _unsubscribe_listener(runtime: ServiceRuntime, *, channel: str) -> Any:
    return runtime.unsubscribe_listener(channel)


async def _refresh_durable(runtime: ServiceRuntime) -> None:
    await runtime.durable.refresh()
