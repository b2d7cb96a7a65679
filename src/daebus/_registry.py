"""The registration tables and decorators shared by :class:`Daebus` and :class:`Blueprint`.

Every decorator calls an explicit ``add_*`` twin and returns the function unchanged.
Each registering method is a :func:`setupmethod`: a blueprint refuses them once it has
been registered, since the app took a copy of its tables then.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast, overload

from ._routes import check_handler, compile_pattern
from .exceptions import SetupError
from .protocol import RESERVED_ACTION_PREFIX, is_pattern
from .runtime.jobs import BackgroundTask, BackgroundTasks, ThreadTask

F = TypeVar("F", bound=Callable[..., Any])

logger = logging.getLogger("daebus")


def setupmethod(method: F) -> F:
    """Mark a method that registers something: it first asks ``_check_setup_finished``."""
    name = method.__name__

    def checked(self: Registry, *args: Any, **kwargs: Any) -> Any:
        self._check_setup_finished(name)
        return method(self, *args, **kwargs)

    # cast: functools.wraps returns a function typed as the wrapper, not as ``method``.
    return cast(F, functools.wraps(method)(checked))


def _check_name(kind: str, name: object) -> str:
    if not isinstance(name, str) or not name:
        raise SetupError(f"{kind} name must be a non-empty string, got {name!r}")
    return name


@dataclass(frozen=True, eq=False, slots=True)
class Listener:
    """One registered listener: the function, and whether it takes one message at a time."""

    func: Callable[..., Any]
    ordered: bool = False
    shared: bool = False


@dataclass(frozen=True, eq=False, slots=True)
class DurableListener:
    """A listener of a durable channel: its stream, its group and how it retries.

    ``group`` None is the service's name. See :mod:`daebus.runtime.durable`.
    """

    channel: str
    func: Callable[..., Any]
    group: str | None
    retries: int
    backoff: float
    min_idle_time: float
    start: str
    ordered: bool = False
    # A field name of the message, or a function of the message: see Registry.listen.
    key: str | Callable[[Any], Any] | None = None

    def __post_init__(self) -> None:
        if is_pattern(self.channel):
            raise SetupError(
                f"durable listeners take exact channel names, not a pattern: {self.channel!r}"
            )
        if self.group is not None:
            _check_name("group", self.group)
            if ":" in self.group:
                raise SetupError(f"a durable listener's group cannot hold ':': {self.group!r}")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise SetupError(f"retries must be an int >= 0, got {self.retries!r}")
        for name, seconds in (("backoff", self.backoff), ("min_idle_time", self.min_idle_time)):
            if not (isinstance(seconds, (int, float)) and 0 < seconds < math.inf):
                raise SetupError(
                    f"{name} must be a positive, finite number of seconds: {seconds!r}"
                )
        if not isinstance(self.start, str) or not (
            self.start in ("latest", "earliest") or _STREAM_ID.fullmatch(self.start)
        ):
            raise SetupError(f"start must be 'latest', 'earliest' or a stream id: {self.start!r}")
        if self.key is not None and not (callable(self.key) or isinstance(self.key, str)):
            raise SetupError(f"key must be a field name or a function, got {self.key!r}")
        if callable(self.key) and (
            inspect.iscoroutinefunction(self.key) or inspect.isasyncgenfunction(self.key)
        ):
            # Its "key" would be a new coroutine for every message: no order at all.
            raise SetupError("key must be a plain function of the message, not an async one")


_STREAM_ID = re.compile(r"\d+(-\d+)?")


class ListenHandlers(MutableMapping[str, Callable[..., Any]]):
    """``app.listen_handlers`` as 0.0.31 had it: channel -> one listener.

    A view of the registry's listeners, for code written for 0.0.31: a channel maps to
    its listener registered last. Setting a channel replaces all of its listeners with
    one; deleting it forgets them (neither subscribes nor unsubscribes: use
    ``add_listener`` and ``remove_listener`` for that).
    """

    __slots__ = ("_registry",)

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def __getitem__(self, channel: str) -> Callable[..., Any]:
        return self._registry._listeners[channel][-1].func

    def __setitem__(self, channel: str, func: Callable[..., Any]) -> None:
        self._registry._listeners[_check_name("channel", channel)] = (Listener(func),)

    def __delitem__(self, channel: str) -> None:
        del self._registry._listeners[channel]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._registry._listeners))

    def __len__(self) -> int:
        return len(self._registry._listeners)

    def __repr__(self) -> str:
        return repr(dict(self))


class Registry:
    """Handler tables plus the decorators that fill them."""

    def __init__(self) -> None:
        #: action name -> handler. Internal; use ``add_action``.
        self.action_handlers: dict[str, Callable[..., Any]] = {}
        # Channel or glob pattern -> its listeners, in registration order. A tuple,
        # replaced whole on each change: the runtime reads it for every broadcast, from
        # the loop, while another thread may add or remove a listener.
        self._listeners: dict[str, tuple[Listener, ...]] = {}
        # (channel, group) -> the durable listener of that group; group None: the service.
        self._durable: dict[tuple[str, str | None], DurableListener] = {}
        #: ``@background`` jobs by name. ``tasks[name].interval = s`` reschedules.
        self.background_tasks = BackgroundTasks()
        #: ``@thread`` tasks by name. Internal; use ``add_thread``.
        self.thread_tasks: dict[str, ThreadTask] = {}
        #: workflow name -> handler (``@workflow``). Internal.
        self.workflow_handlers: dict[str, Callable[..., Any]] = {}
        self._on_start_handlers: list[Callable[..., Any]] = []
        self._on_stop_handlers: list[Callable[..., Any]] = []
        #: ``(path, methods, handler)`` HTTP routes, in registration order; served by
        #: an attached ``DaebusHttp`` whenever it is attached. Internal; use ``add_route``.
        self.routes: list[tuple[str, list[str], Callable[..., Any]]] = []
        #: WebSocket message type -> handler, served by an attached ``DaebusWebSocket``.
        #: Internal; use ``add_socket_handler``.
        self.socket_handlers: dict[str, Callable[..., Any]] = {}
        #: name -> readiness check (``@health_check``). Internal; use ``add_health_check``.
        self.health_checks: dict[str, Callable[..., Any]] = {}

    @property
    def listen_handlers(self) -> MutableMapping[str, Callable[..., Any]]:
        """Channel or pattern -> its listener registered last (0.0.31's table).

        Several listeners may share a channel; :meth:`listeners` has them all.
        """
        return ListenHandlers(self)

    @listen_handlers.setter
    def listen_handlers(self, table: Mapping[str, Callable[..., Any]]) -> None:
        self._listeners = {_check_name("channel", ch): (Listener(f),) for ch, f in table.items()}

    def listeners(self, channel: str) -> list[Callable[..., Any]]:
        """The listeners of ``channel`` (a name or a pattern), in registration order."""
        return [listener.func for listener in self._listeners.get(channel, ())]

    def _check_setup_finished(self, method: str) -> None:
        """Raise ``SetupError`` if ``method`` may no longer change this registry.

        The app may register at any time, also while it runs; :class:`Blueprint`
        refuses once registered.
        """

    # -- actions ---------------------------------------------------------------------
    @overload
    def action(self, name: F) -> F: ...
    @overload
    def action(self, name: str | None = None) -> Callable[[F], F]: ...

    @setupmethod
    def action(self, name: str | Callable[..., Any] | None = None) -> Any:
        """Register an action handler: requests whose ``action`` is ``name`` call it.

        The handler takes no arguments and reads ``request``; it answers with
        ``response.send(...)`` / ``response.error(...)``, by returning a value (sent as
        the final reply if none was sent), by raising (sent as an error reply), or by
        yielding parts of a streamed reply::

            @app.action("echo")
            def echo():
                return request.payload

        ``@app.action`` without a name uses the function's name.
        """
        if callable(name):
            self.add_action(name.__name__, name)
            return name

        def decorator(func: F) -> F:
            self.add_action(name or func.__name__, func)
            return func

        return decorator

    @setupmethod
    def add_action(self, name: str, func: Callable[..., Any]) -> None:
        """Register ``func`` as the handler of action ``name`` (replaces, with a warning)."""
        _check_name("action", name)
        if name.startswith(RESERVED_ACTION_PREFIX):
            raise SetupError(
                f"action names starting with {RESERVED_ACTION_PREFIX!r} are daebus's own: {name!r}"
            )
        if name in self.action_handlers and self.action_handlers[name] is not func:
            logger.warning("action %r is registered again; the new handler replaces it", name)
        self.action_handlers[name] = func

    # -- listeners -------------------------------------------------------------------
    @setupmethod
    def listen(
        self,
        channel: str,
        *,
        ordered: bool = False,
        shared: bool = False,
        durable: bool = False,
        group: str | None = None,
        retries: int = 3,
        backoff: float = 1.0,
        min_idle_time: float = 30.0,
        start: str = "latest",
        key: str | Callable[[Any], Any] | None = None,
    ) -> Callable[[F], F]:
        """Register a listener for broadcasts on ``channel``, a name or a glob (``user:*``).

        The listener gets the decoded message, and the actual channel as a second
        argument if it takes two (also ``request.channel``)::

            @app.listen("sensors:*")
            def on_reading(data, channel):
                ...

        Several listeners may listen on one channel: each gets every message, in a
        context of its own. Messages are handled side by side, as they come; with
        ``ordered=True`` this listener gets them one at a time, in the order they
        arrived (for a pattern, all the messages it matches), ``def`` or ``async def``.
        Every instance of the service gets every message, unless ``shared=True``: then
        the service's instances share the channel's messages, each handled by one of
        them (identical messages too, each one); a message may be handled twice right
        after an instance arrives or reconnects, and one taken by an instance that is
        killed is lost (``durable=True`` keeps them). ``ordered=True`` cannot hold
        across instances: it is refused with ``shared=True``.

        ``durable=True`` consumes the messages sent with ``broadcast.send(channel,
        data, durable=True)`` instead, from the channel's stream, as the consumer group
        ``group`` (the service's name by default): each group gets every message, the
        instances of a group share them, and each is acknowledged once the listener
        returns. One that raises is tried again ``retries`` times, ``backoff`` seconds
        apart at first (doubling, with jitter), then goes to the group's dead-letter
        stream; one held by an instance that died is taken by another once it has been
        idle ``min_idle_time`` seconds. A new group starts at ``start``: ``"latest"``
        (messages sent from now on), ``"earliest"`` (everything the stream holds) or a
        stream id. A durable listener handles its messages side by side; with
        ``ordered=True`` one at a time, in stream order, and with ``key`` (a field name
        of the message, or a function of it) in stream order per key, different keys
        side by side. See docs/durable.md.
        """

        def decorator(func: F) -> F:
            self.add_listener(
                channel,
                func,
                ordered=ordered,
                shared=shared,
                durable=durable,
                group=group,
                retries=retries,
                backoff=backoff,
                min_idle_time=min_idle_time,
                start=start,
                key=key,
            )
            return func

        return decorator

    @setupmethod
    def add_listener(
        self,
        channel: str,
        func: Callable[..., Any],
        *,
        ordered: bool = False,
        shared: bool = False,
        durable: bool = False,
        group: str | None = None,
        retries: int = 3,
        backoff: float = 1.0,
        min_idle_time: float = 30.0,
        start: str = "latest",
        key: str | Callable[[Any], Any] | None = None,
    ) -> None:
        """Register ``func`` for ``channel``, after the listeners it has already.

        A function that listens on ``channel`` already is not added twice: its
        ``ordered`` is updated. A durable listener (see :meth:`listen`) replaces the
        one its group had on ``channel``.
        """
        _check_name("channel", channel)
        if durable:
            self._durable[channel, group] = DurableListener(
                channel, func, group, retries, backoff, min_idle_time, start, ordered, key
            )
            return
        if key is not None:
            raise SetupError("key= orders the messages of a durable listener: add durable=True")
        if ordered and shared:
            raise SetupError(
                "ordered=True cannot hold across the instances that share a channel's "
                "messages (shared=True): use durable=True with ordered=True or key="
            )
        listener = Listener(func, ordered, shared)
        listeners = self._listeners.get(channel, ())
        if any(known.func == func for known in listeners):
            self._listeners[channel] = tuple(
                listener if known.func == func else known for known in listeners
            )
        else:
            self._listeners[channel] = (*listeners, listener)

    @setupmethod
    def remove_listener(self, channel: str, func: Callable[..., Any] | None = None) -> bool:
        """Remove ``func`` from ``channel``'s listeners, or all of them if ``func`` is None.

        Durable listeners too, of every group. Returns whether there was anything to
        remove.
        """
        durable = [
            key
            for key, known in self._durable.items()
            if known.channel == channel and (func is None or known.func == func)
        ]
        for key in durable:
            del self._durable[key]
        listeners = self._listeners.get(channel, ())
        kept = () if func is None else tuple(known for known in listeners if known.func != func)
        if len(kept) == len(listeners):
            return bool(durable)
        if kept:
            self._listeners[channel] = kept
        else:
            del self._listeners[channel]
        return True

    # -- background jobs -------------------------------------------------------------
    @setupmethod
    def background(
        self, name: str, interval: float, *, shared: bool = False, lease: float | None = None
    ) -> Callable[[F], F]:
        """Run the function every ``interval`` seconds, first one interval after start.

        Every instance of the service runs it, unless ``shared=True``: then one instance
        at a time does, the one holding the job's lease in Redis. A holder that stops
        hands it over at once; a killed one's lease expires after ``lease`` seconds
        (by default three intervals, at least 10 s) and another instance takes it.

        Example::


        @app.background("heartbeat", 60)
        def heartbeat():
            broadcast.send("monitoring", {"alive": True})

        @app.background("report", 3600, shared=True)
        def report():
            ...
        """

        def decorator(func: F) -> F:
            self.add_background(name, interval, func, shared=shared, lease=lease)
            return func

        return decorator

    @setupmethod
    def add_background(
        self,
        name: str,
        interval: float,
        func: Callable[..., Any],
        *,
        shared: bool = False,
        lease: float | None = None,
    ) -> None:
        """Register a background job (a job of the same name is replaced, with a warning)."""
        _check_name("background task", name)
        task = BackgroundTask(name, interval, func, shared=shared, lease=lease)
        old = self.background_tasks.add(task)
        if old is not None and old.func is not func:
            logger.warning("background task %r is registered again; the new one replaces it", name)
        self._background_added(task)

    def _background_added(self, task: BackgroundTask) -> None:
        """Called with each background job registered (a running app schedules it)."""

    # -- threads ---------------------------------------------------------------------
    @setupmethod
    def thread(self, name: str, auto_start: bool = True) -> Callable[[F], F]:
        """Run the function in its own thread; it gets ``running``, a callable to poll.

        Example::


        @app.thread("worker")
        def worker(running):
            while running():
                do_some_work()
        """

        def decorator(func: F) -> F:
            self.add_thread(name, func, auto_start)
            return func

        return decorator

    @setupmethod
    def add_thread(self, name: str, func: Callable[..., Any], auto_start: bool = True) -> None:
        """Register a thread task (replaces one of the same name, with a warning)."""
        _check_name("thread", name)
        if name in self.thread_tasks and self.thread_tasks[name].func is not func:
            logger.warning("thread %r is registered again; the new one replaces it", name)
        self.thread_tasks[name] = ThreadTask(name, func, auto_start)

    # -- workflows (0.0.31 leftover) -------------------------------------------------
    @setupmethod
    def workflow(self, workflow_name: str) -> Callable[[F], F]:
        """Register a handler for requests on ``<service>.workflows`` (as an action is)."""

        def decorator(func: F) -> F:
            self.workflow_handlers[_check_name("workflow", workflow_name)] = func
            return func

        return decorator

    # -- lifecycle hooks -------------------------------------------------------------
    @overload
    def on_start(self, func: F) -> F: ...
    @overload
    def on_start(self, func: None = None) -> Callable[[F], F]: ...

    @setupmethod
    def on_start(self, func: Callable[..., Any] | None = None) -> Any:
        """Run the function once the service is started and subscribed.

        Works as ``@app.on_start()`` (0.0.31) and as ``@app.on_start``.
        """
        if func is not None:
            self.add_on_start(func)
            return func

        def decorator(f: F) -> F:
            self.add_on_start(f)
            return f

        return decorator

    @setupmethod
    def add_on_start(self, func: Callable[..., Any]) -> None:
        """Register a start hook."""
        self._on_start_handlers.append(func)

    @overload
    def on_stop(self, func: F) -> F: ...
    @overload
    def on_stop(self, func: None = None) -> Callable[[F], F]: ...

    @setupmethod
    def on_stop(self, func: Callable[..., Any] | None = None) -> Any:
        """Run the function while the service stops, after in-flight handlers finished."""
        if func is not None:
            self._on_stop_handlers.append(func)
            return func

        def decorator(f: F) -> F:
            self._on_stop_handlers.append(f)
            return f

        return decorator

    # -- readiness -------------------------------------------------------------------
    @overload
    def health_check(self, name: F) -> F: ...
    @overload
    def health_check(self, name: str | None = None) -> Callable[[F], F]: ...

    @setupmethod
    def health_check(self, name: str | Callable[..., Any] | None = None) -> Any:
        """Register a readiness check: the service is ready only while every check passes.

        The check takes no arguments (``def`` or ``async def``) and fails by returning
        False or by raising, whose message is then the reason given; anything else
        passes. ``daebus health``, the health action and ``/readyz`` run the checks
        (see :mod:`daebus.readiness`). Named after the function unless given a name.
        """
        if callable(name):
            self.add_health_check(name)
            return name

        def decorator(func: F) -> F:
            self.add_health_check(func, name)
            return func

        return decorator

    @setupmethod
    def add_health_check(self, func: Callable[..., Any], name: str | None = None) -> None:
        """Register ``func`` as the readiness check ``name`` (default: its name; replaces)."""
        self.health_checks[_check_name("health check", name or func.__name__)] = func

    # -- HTTP routes and WebSocket handlers ------------------------------------------
    @setupmethod
    def route(self, path: str, methods: list[str] | None = None) -> Callable[[F], F]:
        """Register an HTTP route; ``methods`` default to ``["GET"]``.

        The handler is called as ``handler(req, **path_params)``. Several routes may
        share a path with different methods. Works before or after ``DaebusHttp`` is
        attached.
        """

        def decorator(func: F) -> F:
            self.add_route(path, methods, func)
            return func

        return decorator

    @setupmethod
    def add_route(self, path: str, methods: list[str] | None, func: Callable[..., Any]) -> None:
        """Register ``func`` for ``path`` and ``methods`` (default ``["GET"]``).

        Raises SetupError, registering nothing, if ``path`` is not a valid pattern or
        ``func`` cannot be called as ``func(req, **path_params)``.
        """
        check_handler(path, func, compile_pattern(path).names)
        if isinstance(methods, str):
            raise SetupError(f"methods must be a list of method names, got {methods!r}")
        names = [_check_name("HTTP method", m).upper() for m in (methods or ["GET"])]
        self.routes.append((path, names, func))

    @setupmethod
    def socket(self, message_type: str) -> Callable[[F], F]:
        """Register the WebSocket handler of messages ``{"type": message_type}``.

        The handler is called as ``handler(data, client_id)``; a value it returns is
        sent back as ``{"type": "response", "data": value}``.
        """

        def decorator(func: F) -> F:
            self.add_socket_handler(message_type, func)
            return func

        return decorator

    @setupmethod
    def add_socket_handler(self, message_type: str, func: Callable[..., Any]) -> None:
        """Register ``func`` for WebSocket messages of ``message_type`` (replaces)."""
        self.socket_handlers[_check_name("socket message type", message_type)] = func

    def socket_connect(self) -> Callable[[F], F]:
        """Register the WebSocket connect handler (it may reject the connection)."""
        return self.socket("connect")

    def socket_disconnect(self) -> Callable[[F], F]:
        """Register the WebSocket disconnect handler."""
        return self.socket("disconnect")

    def socket_register(self) -> Callable[[F], F]:
        """Register the handler of WebSocket ``register`` messages."""
        return self.socket("register")
