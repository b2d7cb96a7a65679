"""What the commands share: the server option and its resolution, JSON in and out.

Output is coloured only when it goes to a terminal (:func:`is_terminal`), and never
when ``$NO_COLOR`` is set (:func:`color_from_env`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from .. import config
from ..transport import transport_from_url
from ._failures import Failure, reported, without_password

__all__ = [
    "CONTEXT_SETTINGS",
    "check_url",
    "color_from_env",
    "decode_message",
    "is_terminal",
    "json_text",
    "parse_json",
    "redis_url_option",
    "resolve_url",
]

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}


def resolve_url(redis_url: str | None) -> str:
    """The server to use: ``--redis-url``, else the library's choice; checked."""
    with reported(secret=redis_url or os.environ.get(config.ENV_REDIS_URL)):
        url = config.resolve_redis_url(redis_url)
    check_url(url)
    return url


def check_url(url: str) -> None:
    """Raise :class:`Failure` unless a transport can be built for ``url``.

    Building one parses the URL (nothing connects yet): checked here, a bad URL is an
    error message rather than a traceback from deep inside a caller.
    """
    try:
        transport_from_url(url)
    except ValueError as exc:
        raise Failure(without_password(f"bad server URL: {exc}", url)) from None


def redis_url_option(text: str | None = None) -> Callable[[F], F]:
    """The ``--redis-url`` option every command takes."""
    return click.option(
        "--redis-url",
        metavar="URL",
        default=None,
        help=text
        or "The server, e.g. redis://host:6379/0 or unix:///path/to/socket, or "
        "'embedded' for daebus's shared embedded server. Default: $DAEBUS_REDIS_URL, "
        "else localhost:6379 if a server answers, else the shared embedded server.",
    )


def color_from_env() -> bool | None:
    """False when ``$NO_COLOR`` is set (https://no-color.org), else None: auto-detect."""
    return False if os.environ.get("NO_COLOR") else None


def is_terminal() -> bool:
    """Whether stdout is a terminal: output for a person rather than a program."""
    return sys.stdout.isatty()


def json_text(value: Any, *, pretty: bool = False) -> str:
    """``value`` as JSON text, non-ASCII characters kept."""
    return json.dumps(value, ensure_ascii=False, indent=2 if pretty else None)


def parse_json(text: str, param_hint: str) -> Any:
    """Decode a JSON argument; ``-`` reads it from stdin."""
    if text == "-":
        text = sys.stdin.read()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(
            f"not valid JSON ({exc}): {text!r}", param_hint=param_hint
        ) from None


def decode_message(data: bytes) -> tuple[str, bool]:
    """A message as text: compact JSON if it is JSON, else the raw text; and which."""
    try:
        return json_text(json.loads(data)), True
    except ValueError:
        pass
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return repr(data), False
    # One message, one line: control characters are shown escaped.
    return (text if text.isprintable() else repr(text)), False
