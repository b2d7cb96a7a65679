"""``daebus run``: import a module, find its Daebus app, run it until a signal."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from .. import config
from ..app import Daebus
from ..runtime import loop as _loop
from ._failures import Failure, reported
from ._options import check_url, redis_url_option

__all__ = ["load_app", "run"]


def load_app(target: str) -> Daebus:
    """Import ``module[:attribute]`` (or ``path/to/file.py[:attribute]``) and find its app.

    The current directory comes first on ``sys.path``, as with ``flask`` and ``uvicorn``.
    Without an attribute, the module's ``app`` is used if it is a :class:`Daebus`, else
    its only :class:`Daebus`. Raises :class:`Failure` with a message saying what is
    missing; an exception raised by the module's own code propagates as it is.
    """
    module_name, _, attribute = target.partition(":")
    if not module_name:
        raise click.BadParameter("give a module, as in my_service or my_service:app")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise Failure(f"no such file: {module_name}")
        sys.path.insert(0, str(path.resolve().parent))
        module_name = path.stem
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    module = _import(module_name)
    if attribute:
        return _app_attribute(module, attribute)
    app = getattr(module, "app", None)
    if isinstance(app, Daebus):
        return app
    found: dict[int, tuple[str, Daebus]] = {}  # by identity: an app may have two names
    for name, value in vars(module).items():
        if isinstance(value, Daebus):
            found.setdefault(id(value), (name, value))
    if len(found) == 1:
        ((_, only),) = found.values()
        return only
    if not found:
        raise Failure(f"module {module_name!r} has no Daebus app; name one: {module_name}:NAME")
    names = ", ".join(sorted(name for name, _ in found.values()))
    raise Failure(
        f"module {module_name!r} has several Daebus apps ({names}); name one: {module_name}:NAME"
    )


def _import(module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise Failure(
                f"cannot import {module_name!r}: no module named {missing!r} "
                f"(looked in {os.getcwd()} and on sys.path)"
            ) from None
        raise


def _app_attribute(module: ModuleType, attribute: str) -> Daebus:
    value: Any = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise Failure(f"module {module.__name__!r} has no attribute {attribute!r}") from None
    if not isinstance(value, Daebus):
        raise Failure(
            f"{module.__name__}:{attribute} is a {type(value).__name__}, not a Daebus app"
        )
    return value


@click.command(short_help="Run a service.")
@click.argument("target", metavar="MODULE[:APP]")
@click.option(
    "--service", "-s", metavar="NAME", help="The service's name (its channel). Default: the app's."
)
@click.option("--debug", is_flag=True, help="Log every message in and out.")
@click.option(
    "--loop",
    type=click.Choice(["auto", "uvloop", "asyncio"]),
    help="The event loop: uvloop where installed (auto), or asyncio's own. "
    "Default: $DAEBUS_EVENT_LOOP, else auto.",
)
@redis_url_option()
def run(
    target: str, service: str | None, debug: bool, loop: str | None, redis_url: str | None
) -> None:
    """Run the Daebus app MODULE[:APP] until SIGTERM or Ctrl-C.

    APP is the app's name in the module; without it, the module's `app`, or its only
    Daebus app. The current directory is searched first, as `python -m` does.
    """
    if loop is not None:
        os.environ[_loop.ENV_EVENT_LOOP] = loop  # read by app.run, and by child processes
    app = load_app(target)
    given = redis_url or os.environ.get(config.ENV_REDIS_URL)
    if given and given != config.EMBEDDED:
        check_url(given)
    # The app resolves a missing URL itself, after it has set up logging, so that the
    # log says which server it chose.
    with reported(secret=given):
        app.run(service or app.name, debug=debug, redis_url=redis_url)
