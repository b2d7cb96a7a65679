"""Blueprints: groups of handlers defined apart from the app and registered on it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from ._registry import Registry, _check_name

__all__ = ["Blueprint"]

F = TypeVar("F", bound=Callable[..., Any])


class Blueprint(Registry):
    """A set of actions, listeners, jobs, threads, hooks, routes and socket handlers.

    Register it with ``app.register_blueprint(bp)``; everything it holds is copied into
    the app (on a name clash the blueprint's handler wins, with a warning)::

        users = Blueprint("users")

        @users.action("get_user")
        def get_user():
            return {"id": request.payload["id"]}
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = _check_name("blueprint", name)
        self.logger = logging.getLogger(f"blueprint.{name}")
        #: ``(path, methods, handler)`` routes, applied when HTTP is attached. Internal.
        self.routes: list[tuple[str, list[str], Callable[..., Any]]] = []
        #: WebSocket message type -> handler, applied when WebSocket is attached. Internal.
        self.socket_handlers: dict[str, Callable[..., Any]] = {}

    @property
    def on_start_handlers(self) -> list[Callable[..., Any]]:
        """The start hooks registered on this blueprint."""
        return self._on_start_handlers

    def route(self, path: str, methods: list[str] | None = None) -> Callable[[F], F]:
        """Record an HTTP route; ``methods`` default to ``["GET"]``."""

        def decorator(func: F) -> F:
            self.routes.append((path, [m.upper() for m in (methods or ["GET"])], func))
            return func

        return decorator

    def socket(self, message_type: str) -> Callable[[F], F]:
        """Record a WebSocket handler for messages of ``message_type``."""

        def decorator(func: F) -> F:
            self.socket_handlers[_check_name("socket message type", message_type)] = func
            return func

        return decorator

    def socket_connect(self) -> Callable[[F], F]:
        """Record the WebSocket connect handler."""
        return self.socket("connect")

    def socket_disconnect(self) -> Callable[[F], F]:
        """Record the WebSocket disconnect handler."""
        return self.socket("disconnect")

    def socket_register(self) -> Callable[[F], F]:
        """Record the WebSocket ``register`` message handler."""
        return self.socket("register")

    def __repr__(self) -> str:
        return f"<Blueprint {self.name!r}>"
