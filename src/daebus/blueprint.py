"""Blueprints: groups of handlers defined apart from the app and registered on it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from ._registry import Registry, _check_name
from .exceptions import SetupError

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

    Once registered, a blueprint refuses further registrations with ``SetupError``, as
    Flask's do: the app has its copy already, so a later one would silently reach no
    app. It may still be registered again, on this app or another.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = _check_name("blueprint", name)
        self.logger = logging.getLogger(f"blueprint.{name}")
        #: Set by ``app.register_blueprint()``; from then on it refuses registrations.
        self._registered = False

    def _check_setup_finished(self, method: str) -> None:
        if self._registered:
            raise SetupError(
                f"{method}() can no longer be called on the blueprint {self.name!r}: it "
                "has been registered already, and the app does not see later changes. "
                "Register everything on the blueprint before app.register_blueprint()."
            )

    @property
    def on_start_handlers(self) -> list[Callable[..., Any]]:
        """The start hooks registered on this blueprint."""
        return self._on_start_handlers

    def __repr__(self) -> str:
        return f"<Blueprint {self.name!r}>"
