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

    @property
    def on_start_handlers(self) -> list[Callable[..., Any]]:
        """The start hooks registered on this blueprint."""
        return self._on_start_handlers

    def __repr__(self) -> str:
        return f"<Blueprint {self.name!r}>"
