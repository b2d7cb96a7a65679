"""What ``daebus run`` asks of the apps a file runs itself, and whether it ran any.

``daebus run FILE`` runs the file as ``python FILE`` does (as ``__main__``): a file that
ends with ``app.run(service="system_monitor")`` serves as ``system_monitor``, the name
its own call gives. The command's ``--service``, ``--debug`` and ``--redis-url``, when
given, still apply to that call: :func:`command_line` holds them while the file runs,
and :meth:`daebus.Daebus.run` reads them through :func:`run_options`. Every serve is
counted (:func:`note_served`), so that the command knows whether the file ran an app
itself or only defined one, which it then runs as it runs a module's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["command_line", "note_served", "run_options", "served"]


@dataclass(frozen=True)
class _Options:
    service: str | None
    debug: bool
    redis_url: str | None


_lock = threading.Lock()
_served = 0
_options: _Options | None = None


def note_served() -> None:
    """An app of this process began to serve."""
    global _served
    with _lock:
        _served += 1


def served() -> int:
    """How many times an app of this process began to serve."""
    return _served


@contextmanager
def command_line(service: str | None, debug: bool, redis_url: str | None) -> Iterator[None]:
    """While the block runs, :meth:`Daebus.run` calls take these options where given."""
    global _options
    previous, _options = _options, _Options(service, debug, redis_url)
    try:
        yield
    finally:
        _options = previous


def run_options(service: str, debug: bool, redis_url: str | None) -> tuple[str, bool, str | None]:
    """``run()``'s arguments, with the command line's options in their place where given."""
    options = _options
    if options is None:
        return service, debug, redis_url
    return (
        options.service or service,
        options.debug or debug,
        options.redis_url or redis_url,
    )
