"""Logging helpers. The library never configures logging on import.

``app.run()`` (and so ``daebus run``) prints logs to stderr when nothing else was
configured: as text lines, or, when ``$DAEBUS_LOG_FORMAT`` is ``json`` (``daebus run
--log-format json``), as one JSON object per line, for journald, Loki or Elasticsearch.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from typing import Any

__all__ = [
    "ENV_LOG_FORMAT",
    "LOG_FORMATS",
    "JsonFormatter",
    "configure_for_run",
    "direct_logger",
    "get_logger",
    "set_log_level",
]

FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"

#: Chooses the format of the lines ``app.run()`` prints: ``text`` or ``json``.
ENV_LOG_FORMAT = "DAEBUS_LOG_FORMAT"
LOG_FORMATS = ("text", "json")

#: The plain ``daebus`` logger, usable anywhere (0.0.31's ``direct_logger``).
direct_logger = logging.getLogger("daebus")


def configure_for_run(debug: bool = False) -> None:
    """Called by ``app.run()``: print logs to stderr if nothing else was configured.

    The lines are text, or JSON when ``$DAEBUS_LOG_FORMAT`` is ``json``. ``debug=True``
    also turns on DEBUG for daebus, which logs every message in and out.
    """
    chosen = os.environ.get(ENV_LOG_FORMAT, "").strip().lower() or "text"
    root = logging.getLogger()
    if not root.handlers:
        if chosen == "json":
            handler = logging.StreamHandler()
            handler.setFormatter(JsonFormatter())
            logging.basicConfig(level=logging.INFO, handlers=[handler])
        else:
            logging.basicConfig(level=logging.INFO, format=FORMAT)
    if chosen not in LOG_FORMATS:
        # Said once the logs are set up, as text: a typo must not cost the logs.
        direct_logger.warning(
            "$%s=%r: use one of %s; logging as text",
            ENV_LOG_FORMAT,
            chosen,
            ", ".join(LOG_FORMATS),
        )
    if debug:
        enable_debug_logging()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line.

    Keys: ``time`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``, ``message``, then,
    when known, ``service`` and ``instance`` (of the handler's app, else of the only app
    serving in the process), ``exception`` and ``stack`` (their text).
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as a line of JSON."""
        when = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        line: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        # Imported here: the context module imports the app's machinery, and logging
        # is set up before any of it may be needed.
        from .context import _find_app

        app = _find_app()
        if app is not None and app.service:
            line["service"] = app.service
            if app.instance_id:
                line["instance"] = app.instance_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def enable_debug_logging() -> None:
    """Log at DEBUG for daebus: every message in and out goes to ``daebus.flow``."""
    direct_logger.setLevel(logging.DEBUG)


def set_log_level(level: int | str) -> None:
    """Set the level of the ``daebus`` logger."""
    direct_logger.setLevel(level)


def get_logger(name: str | None = None) -> logging.Logger:
    """``daebus.<name>``, or the ``daebus`` logger itself."""
    return logging.getLogger(f"daebus.{name}") if name else direct_logger
