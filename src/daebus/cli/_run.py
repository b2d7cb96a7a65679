"""``daebus run``: run a file as ``python`` would, or a module's app, until a signal.

``daebus run FILE.py`` runs the file as ``__main__``, as ``python FILE.py`` does: a file
that starts its app itself (``app.run(service=...)``, often under ``if __name__ ==
"__main__"``) serves under the name it gives, and the command's options apply to that
call (see :mod:`daebus._launch`). A file that only defines an app is then run as a
module's: ``daebus run MODULE[:APP]`` imports the module, finds its app and runs it.
"""

from __future__ import annotations

import importlib
import os
import runpy
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from .. import _launch, _logging, config
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
    return _the_app(vars(module), f"module {module_name!r}", module_name)


def _the_app(namespace: dict[str, Any], what: str, target: str) -> Daebus:
    """The namespace's ``app`` if it is a :class:`Daebus`, else its only one."""
    app = namespace.get("app")
    if isinstance(app, Daebus):
        return app
    found: dict[int, tuple[str, Daebus]] = {}  # by identity: an app may have two names
    for name, value in namespace.items():
        if isinstance(value, Daebus):
            found.setdefault(id(value), (name, value))
    if len(found) == 1:
        ((_, only),) = found.values()
        return only
    if not found:
        raise Failure(f"{what} has no Daebus app; name one: {target}:NAME")
    names = ", ".join(sorted(name for name, _ in found.values()))
    raise Failure(f"{what} has several Daebus apps ({names}); name one: {target}:NAME")


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
@click.argument("target", metavar="FILE.py|MODULE[:APP]")
@click.option(
    "--service",
    "-s",
    metavar="NAME",
    help="The service's name (its channel). Default: the name the file's own app.run() "
    "gives, else the app's.",
)
@click.option("--debug", is_flag=True, help="Log every message in and out.")
@click.option(
    "--loop",
    type=click.Choice(["auto", "uvloop", "asyncio"]),
    help="The event loop: uvloop where installed (auto), or asyncio's own. "
    "Default: $DAEBUS_EVENT_LOOP, else auto.",
)
@click.option(
    "--log-format",
    type=click.Choice(_logging.LOG_FORMATS),
    help=f"Log lines as text, or as one JSON object each. Default: ${_logging.ENV_LOG_FORMAT}, "
    "else text.",
)
@redis_url_option()
def run(
    target: str,
    service: str | None,
    debug: bool,
    loop: str | None,
    log_format: str | None,
    redis_url: str | None,
) -> None:
    """Run a service until SIGTERM or Ctrl-C: FILE.py as `python FILE.py`, or MODULE's app.

    A FILE.py that starts its app itself (`app.run(service=...)`) serves under the name it
    gives; one that only defines an app, and MODULE, are served by this command. APP is
    the app's name in the module; without it, the module's `app`, or its only Daebus app.
    The current directory is searched first, as `python -m` does.
    """
    # Read by app.run, wherever the file calls it, and by child processes.
    if loop is not None:
        os.environ[_loop.ENV_EVENT_LOOP] = loop
    if log_format is not None:
        os.environ[_logging.ENV_LOG_FORMAT] = log_format
    given = redis_url or os.environ.get(config.ENV_REDIS_URL)
    if given and given != config.EMBEDDED:
        check_url(given)
    if redis_url:
        # The file's callers then use the service's server.
        os.environ[config.ENV_REDIS_URL] = redis_url
    served = _launch.served()
    module_name, _, attribute = target.partition(":")
    if target.endswith(".py") and Path(target).is_file():
        module_name, attribute = target, ""  # a colon in a folder's name names no APP
    # The app resolves a missing URL itself, after it has set up logging, so that the
    # log says which server it chose.
    with reported(secret=given):
        if module_name.endswith(".py") and not attribute:
            app, name = _run_file(Path(module_name), service, debug, redis_url)
        else:
            # A module may run its app as it is imported: the options apply there too.
            with _launch.command_line(service, debug, redis_url):
                app = load_app(target)
            name = service or app.name
        if app is not None and _launch.served() == served:
            app.run(name, debug=debug, redis_url=redis_url)


def _run_file(
    path: Path, service: str | None, debug: bool, redis_url: str | None
) -> tuple[Daebus | None, str]:
    """Run ``path`` as ``__main__``; the app to serve (and its name) if it served none.

    ``sys.argv`` and ``sys.path[0]`` are what ``python FILE`` gives the file.
    """
    if not path.is_file():
        raise Failure(f"no such file: {path}")
    sys.argv = [str(path)]
    sys.path.insert(0, str(path.resolve().parent))
    served = _launch.served()
    with _launch.command_line(service, debug, redis_url):
        namespace = runpy.run_path(str(path), run_name="__main__")
    if _launch.served() != served:
        return None, ""  # it ran its app, which has stopped: as `python FILE`, done
    app = _the_app(namespace, f"file {str(path)!r}", str(path))
    # Daebus(__name__) in a file run as __main__: named after the file, as when imported.
    return app, service or (path.stem if app.name == "__main__" else app.name)
