"""Per-message context and the proxies that read it: ``request``, ``response``, ...

One :class:`~contextvars.ContextVar` holds the current :class:`MessageContext`. It is
set for each message (inside the task or worker thread handling it), for background
jobs, thread tasks and hooks, so two concurrent handlers never see each other's request.
Nothing falls back to state shared between requests.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, cast

from ._standalone import standalone_cache
from .exceptions import ContextError
from .pubsub import PubSubBroadcast, PubSubRequest, PubSubResponse, standalone_broadcast

if TYPE_CHECKING:
    import redis

    from .app import Daebus

__all__ = [
    "MessageContext",
    "bind",
    "broadcast",
    "cache",
    "current_context",
    "get_daemon",
    "logger",
    "request",
    "response",
]

_log = logging.getLogger(__name__)

CONTEXT_TYPES = frozenset({"pubsub", "http", "websocket"})


_build_lock = threading.Lock()


class MessageContext:
    """What a handler runs with: its app and, for a message, its request and response.

    ``kind`` is ``"pubsub"``, ``"http"``, ``"websocket"``, or None for jobs, threads and
    hooks. A subclass may make the request and response on first use instead (it starts
    with ``built`` False and implements :meth:`_parts`): a listener that never reads
    ``request`` (most of them) does not pay for them.
    """

    __slots__ = ("_request", "_response", "app", "built", "kind")

    def __init__(
        self, app: Daebus, kind: str | None = None, request: Any = None, response: Any = None
    ) -> None:
        self.app = app
        self.kind = kind
        self._request = request
        self._response = response
        #: False while the request and response are still to be made.
        self.built = True

    @property
    def request(self) -> Any:
        """The message's request (a ``PubSubRequest``, ``HttpRequest``...), or None."""
        if not self.built:
            self._make()
        return self._request

    @property
    def response(self) -> Any:
        """The message's response, or None for jobs, threads and hooks."""
        if not self.built:
            self._make()
        return self._response

    def _make(self) -> None:
        # Under a lock: a handler may hand its context to several threads at once.
        with _build_lock:
            if not self.built:
                self._request, self._response = self._parts()
                self.built = True

    def _parts(self) -> tuple[Any, Any]:
        """Make the request and response, once, on first use (where ``built`` was False)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<MessageContext {self.kind} of {self.app!r}>"


_current: ContextVar[MessageContext | None] = ContextVar("daebus_context", default=None)

# Apps whose run()/start()/serve() is in progress, so that code outside any handler
# (a user's own thread, a module-level helper) can still reach *the* app's Redis through
# ``broadcast``/``cache``. Never used for ``request``/``response``.
_running_apps: list[Daebus] = []
_running_lock = threading.Lock()


def current_context() -> MessageContext | None:
    """The context of the running handler, job, thread or hook, if any."""
    return _current.get()


#: ``push(context)`` makes ``context`` current and returns a token; ``pop(token)``
#: restores the context that was current before the matching push. The ContextVar's own
#: methods rather than functions around them: they run for every message.
push: Callable[[MessageContext | None], Token[MessageContext | None]] = _current.set
pop: Callable[[Token[MessageContext | None]], None] = _current.reset


@contextmanager
def bind(context: MessageContext) -> Iterator[MessageContext]:
    """Run a block with ``context`` current."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def _register_running(app: Daebus) -> None:
    with _running_lock:
        _running_apps.append(app)


def _unregister_running(app: Daebus) -> None:
    with _running_lock:
        if app in _running_apps:
            _running_apps.remove(app)


def _find_app() -> Daebus | None:
    """The current context's app, else the only running app in this process."""
    context = _current.get()
    if context is not None:
        return context.app
    with _running_lock:
        return _running_apps[0] if len(_running_apps) == 1 else None


def get_daemon() -> Daebus:
    """The app of the current handler (or the only running app in this process).

    Raises:
        ContextError: no app is running here ("Daebus not initialized").
    """
    app = _find_app()
    if app is None:
        raise ContextError(
            "Daebus not initialized; call app.run() first (or use the app object directly)"
        )
    return app


def _outside(name: str) -> ContextError:
    return ContextError(
        f"`{name}` is only available while a daebus handler runs (an action, listener, "
        f"route or socket handler); here there is no current message"
    )


class _RequestProxy:
    """The current message's request: ``payload``, ``reply_to``, ``request_id``, ..."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        context = _current.get()
        if context is None or context.request is None:
            if name == "payload" and context is not None:
                return {}  # 0.0.31 gave an empty payload in jobs and hooks
            raise _outside("request")
        return getattr(context.request, name)

    def __repr__(self) -> str:
        context = _current.get()
        target = context.request if context is not None else None
        return f"<request proxy for {target!r}>"


class _ResponseProxy:
    """The current message's response: ``send``, ``error``, ``success``, ``progress``."""

    __slots__ = ()

    def _target(self, name: str) -> Any:
        context = _current.get()
        if context is None:
            raise _outside("response")
        return context.response

    def __getattr__(self, name: str) -> Any:
        target = self._target(name)
        if target is None:
            if name in {"send", "error", "success", "progress"}:
                return _no_response(name)
            raise _outside("response")
        return getattr(target, name)

    def __repr__(self) -> str:
        context = _current.get()
        target = context.response if context is not None else None
        return f"<response proxy for {target!r}>"


def _no_response(name: str) -> Any:
    def nothing(*args: Any, **kwargs: Any) -> int:
        _log.warning(
            "response.%s() called where there is no request to answer (a job, thread "
            "or hook); nothing was sent. Use broadcast.send() to publish instead.",
            name,
        )
        return 0

    return nothing


class _BroadcastProxy:
    """Publish to any channel: ``broadcast.send(channel, data) -> receiver count``.

    Inside a service it uses the service's Redis; in a plain script, the Redis that
    ``$DAEBUS_REDIS_URL`` names (localhost:6379 by default).
    """

    __slots__ = ()

    def _target(self) -> PubSubBroadcast:
        app = _find_app()
        if app is not None:
            return app.broadcast
        return standalone_broadcast()

    def __getattr__(self, name: str) -> Any:
        if name in {"success", "error", "progress"}:
            # 0.0.31 quirk: these resolved to the current response's methods.
            return getattr(response, name)
        return getattr(self._target(), name)

    def __repr__(self) -> str:
        return "<broadcast proxy>"


class _CacheProxy:
    """The service's Redis client (redis-py, ``decode_responses=True``): any Redis command."""

    __slots__ = ()

    def _target(self) -> redis.Redis:
        app = _find_app()
        client: redis.Redis | None = app.cache if app is not None else None
        if client is not None:
            return client
        return standalone_cache()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target(), name)

    def __repr__(self) -> str:
        return "<cache proxy>"


class _LoggerProxy:
    """The current app's logger (``daebus.<name>``), or the ``daebus`` logger; never raises."""

    __slots__ = ()

    def _target(self) -> logging.Logger:
        app = _find_app()
        return app.logger if app is not None else logging.getLogger("daebus")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target(), name)

    def __repr__(self) -> str:
        return f"<logger proxy for {self._target().name}>"


# Each proxy is typed as what it stands for, as Flask's globals.py types its own, so
# that editors and mypy check ``request.payload`` or ``response.send(...)``; the cast
# is the one place that says a proxy is its target. In an HTTP route or a socket
# handler, ``request`` and ``response`` stand for that message's own objects, which
# the handler is also given as arguments.

#: The current message's request.
request = cast(PubSubRequest, _RequestProxy())
#: The current message's response.
response = cast(PubSubResponse, _ResponseProxy())
#: Publishes to any channel, on the current app's Redis (or the configured one).
broadcast = cast(PubSubBroadcast, _BroadcastProxy())
#: The current app's redis-py client (or one for the configured Redis).
cache = cast("redis.Redis", _CacheProxy())
#: The current app's logger, or the ``daebus`` logger.
logger = cast(logging.Logger, _LoggerProxy())
