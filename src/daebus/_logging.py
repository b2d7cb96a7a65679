"""Logging helpers. The library never configures logging on import."""

from __future__ import annotations

import logging

__all__ = ["configure_for_run", "direct_logger", "get_logger", "set_log_level"]

FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"

#: The plain ``daebus`` logger, usable anywhere (0.0.31's ``direct_logger``).
direct_logger = logging.getLogger("daebus")


def configure_for_run(debug: bool = False) -> None:
    """Called by ``app.run()``: print logs to stderr if nothing else was configured.

    ``debug=True`` also turns on DEBUG for daebus, which logs every message in and out.
    """
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format=FORMAT)
    if debug:
        enable_debug_logging()


def enable_debug_logging() -> None:
    """Log at DEBUG for daebus: every message in and out goes to ``daebus.flow``."""
    direct_logger.setLevel(logging.DEBUG)


def set_log_level(level: int | str) -> None:
    """Set the level of the ``daebus`` logger."""
    direct_logger.setLevel(level)


def get_logger(name: str | None = None) -> logging.Logger:
    """``daebus.<name>``, or the ``daebus`` logger itself."""
    return logging.getLogger(f"daebus.{name}") if name else direct_logger
