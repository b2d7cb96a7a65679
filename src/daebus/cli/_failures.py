"""How the ``daebus`` command fails: its exit codes, and errors shown without a traceback.

An expected failure (a server down, a bad setup, an error reply) is a
:class:`Failure`: one ``Error: ...`` line on stderr, and its exit code. A URL in the
message is shown with its password masked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import click

from ..exceptions import DaebusError, TransportError
from ..transport._url import redact_url

__all__ = [
    "EXIT_CODES_HELP",
    "EXIT_ERROR_REPLY",
    "EXIT_FAILURE",
    "EXIT_NO_SERVICE",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "ErrorReplyFailure",
    "Failure",
    "NoServiceFailure",
    "TimeoutFailure",
    "reported",
    "without_password",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_ERROR_REPLY = 3
EXIT_TIMEOUT = 4
EXIT_NO_SERVICE = 5

EXIT_CODES_HELP = f"""\b
Exit codes:
  {EXIT_OK}  the reply was printed
  {EXIT_FAILURE}  the server cannot be reached (or another failure)
  {EXIT_USAGE}  usage error, e.g. JSON that is not JSON
  {EXIT_ERROR_REPLY}  the service answered with an error
  {EXIT_TIMEOUT}  no reply (or no next part) within --timeout
  {EXIT_NO_SERVICE}  no service is listening
"""


class Failure(click.ClickException):
    """An expected failure: printed as ``Error: message``, no traceback, exit code 1."""

    def show(self, file: Any = None) -> None:
        """Print the message to stderr, with a red ``Error:`` on a terminal."""
        label = click.style("Error:", fg="red", bold=True)
        click.echo(f"{label} {self.format_message()}", file=file, err=True, color=self.show_color)


class ErrorReplyFailure(Failure):
    """The service answered with an error reply."""

    exit_code = EXIT_ERROR_REPLY


class TimeoutFailure(Failure):
    """No reply in time."""

    exit_code = EXIT_TIMEOUT


class NoServiceFailure(Failure):
    """Nobody listens on the service's channel."""

    exit_code = EXIT_NO_SERVICE


@contextmanager
def reported(url: str | None = None, *, secret: str | None = None) -> Iterator[None]:
    """Turn the errors daebus raises for a bad setup or a server down into a :class:`Failure`.

    The message names the server ``url`` if given; the password of ``url`` (or of
    ``secret``, a URL the message does not name) is masked.
    """
    secret = secret or url
    try:
        yield
    except TransportError as exc:
        message = f"Redis at {url}: {exc}" if url else str(exc)
        raise Failure(without_password(message, secret)) from exc
    except DaebusError as exc:
        raise Failure(without_password(str(exc), secret)) from exc


def without_password(text: str, url: str | None) -> str:
    """``text`` with ``url``, and any other spelling of its password, masked."""
    if not url:
        return text
    text = text.replace(url, redact_url(url))
    try:
        password = urlsplit(url).password
    except ValueError:
        return text
    if not password:
        return text
    # An error from deeper down may quote the URL as it rebuilt it (normalised, say). Only
    # the password's URL spellings are masked: a short one may also be part of a word.
    for shown in (f":{password}@", f"password={password}"):
        text = text.replace(shown, shown.replace(password, "***"))
    return text
