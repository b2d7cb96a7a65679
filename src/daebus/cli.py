"""The ``daebus`` command: run, call, publish to and watch services from a shell.

Every command takes ``--redis-url``; without it the server is found as the library
finds it (:func:`daebus.config.resolve_redis_url`); ``--redis-url embedded`` names the
shared embedded server. A URL is shown (in errors and banners) with its password masked.
Output is coloured only when it goes to a terminal, and never when ``$NO_COLOR`` is set.
The exit codes are the ``EXIT_*`` constants, listed by ``daebus call --help``.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click

from . import __version__, config
from .app import Daebus
from .caller import DaebusCaller
from .encoding import dumps
from .exceptions import (
    CallTimeoutError,
    DaebusError,
    RemoteError,
    ServiceUnavailableError,
    TransportError,
)
from .runtime import loop as _loop
from .transport import transport_from_url
from .transport._url import redact_url

__all__ = [
    "EXIT_ERROR_REPLY",
    "EXIT_FAILURE",
    "EXIT_NO_SERVICE",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "cli",
    "load_app",
    "main",
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

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}


# -- errors ------------------------------------------------------------------------------
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
def _reported(url: str | None = None, *, secret: str | None = None) -> Iterator[None]:
    """Turn the errors daebus raises for a bad setup or a server down into a :class:`Failure`.

    The message names the server ``url`` if given; the password of ``url`` (or of
    ``secret``, a URL the message does not name) is masked.
    """
    secret = secret or url
    try:
        yield
    except TransportError as exc:
        message = f"Redis at {url}: {exc}" if url else str(exc)
        raise Failure(_without_password(message, secret)) from exc
    except DaebusError as exc:
        raise Failure(_without_password(str(exc), secret)) from exc


def _without_password(text: str, url: str | None) -> str:
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


def _resolve_url(redis_url: str | None) -> str:
    """The server to use: ``--redis-url``, else the library's choice; checked."""
    with _reported(secret=redis_url or os.environ.get(config.ENV_REDIS_URL)):
        url = config.resolve_redis_url(redis_url)
    _check_url(url)
    return url


def _check_url(url: str) -> None:
    """Raise :class:`Failure` unless a transport can be built for ``url``.

    Building one parses the URL (nothing connects yet): checked here, a bad URL is an
    error message rather than a traceback from deep inside a caller.
    """
    try:
        transport_from_url(url)
    except ValueError as exc:
        raise Failure(_without_password(f"bad server URL: {exc}", url)) from None


# -- output ------------------------------------------------------------------------------
def _is_terminal() -> bool:
    return sys.stdout.isatty()


def _json_text(value: Any, *, pretty: bool = False) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2 if pretty else None)


def _parse_json(text: str, param_hint: str) -> Any:
    """Decode a JSON argument; ``-`` reads it from stdin."""
    if text == "-":
        text = sys.stdin.read()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(
            f"not valid JSON ({exc}): {text!r}", param_hint=param_hint
        ) from None


def _decode_message(data: bytes) -> tuple[str, bool]:
    """A message as text: compact JSON if it is JSON, else the raw text; and which."""
    try:
        return _json_text(json.loads(data)), True
    except ValueError:
        pass
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return repr(data), False
    # One message, one line: control characters are shown escaped.
    return (text if text.isprintable() else repr(text)), False


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


# -- the group ---------------------------------------------------------------------------
def color_from_env() -> bool | None:
    """False when ``$NO_COLOR`` is set (https://no-color.org), else None: auto-detect."""
    return False if os.environ.get("NO_COLOR") else None


@click.group("daebus", context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="daebus")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Run, call, publish to and watch daebus services."""
    if color_from_env() is False:
        ctx.color = False


def main() -> None:
    """Entry point of the ``daebus`` script."""
    cli.main(prog_name="daebus")


# -- daebus run --------------------------------------------------------------------------
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


@cli.command(short_help="Run a service.")
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
        _check_url(given)
    # The app resolves a missing URL itself, after it has set up logging, so that the
    # log says which server it chose.
    with _reported(secret=given):
        app.run(service or app.name, debug=debug, redis_url=redis_url)


# -- daebus call -------------------------------------------------------------------------
@cli.command(epilog=EXIT_CODES_HELP, short_help="Call an action of a service.")
@click.argument("service")
@click.argument("action")
@click.argument("payload", metavar="[JSON]", default="{}")
@click.option(
    "--timeout",
    "-t",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds to wait for the reply, or for the next part of a streamed reply.",
)
@redis_url_option()
def call(service: str, action: str, payload: str, timeout: float, redis_url: str | None) -> None:
    """Call ACTION of SERVICE with a JSON payload (default {}; - reads stdin).

    Streamed parts are printed as they arrive, then the final reply: one JSON value a
    line when the output is not a terminal, so the reply is the last line.
    """
    data = _parse_json(payload, "JSON")
    url = _resolve_url(redis_url)
    terminal = _is_terminal()
    parts = 0

    def print_part(part: Any) -> None:
        nonlocal parts
        parts += 1
        if terminal:
            click.echo(click.style(f"part {parts}: ", dim=True) + _json_text(part))
        else:
            click.echo(_json_text(part))

    where = f"{service}.{action}"
    with _reported(url), DaebusCaller(service, redis_url=url, timeout=timeout) as caller:
        try:
            reply = caller.send_request(action, data, on_progress=print_part)
        except RemoteError as exc:
            raise ErrorReplyFailure(f"{where} answered with an error: {exc.message}") from exc
        except ServiceUnavailableError as exc:
            raise NoServiceFailure(
                f"no service {service!r} is listening at {redact_url(url)}"
            ) from exc
        except CallTimeoutError as exc:
            raise TimeoutFailure(f"{where}: no reply within {timeout}s") from exc
    click.echo(_json_text(reply, pretty=terminal))


# -- daebus publish ----------------------------------------------------------------------
@cli.command(short_help="Publish a message on a channel.")
@click.argument("channel")
@click.argument("payload", metavar="JSON")
@click.option("--raw", is_flag=True, help="Send the argument as it is, not as JSON.")
@redis_url_option()
def publish(channel: str, payload: str, raw: bool, redis_url: str | None) -> None:
    """Publish JSON (- reads stdin) on CHANNEL and print how many received it."""
    if raw:
        # Bytes as given: stdin unread by any codec, argv as the OS passed it.
        data = sys.stdin.buffer.read() if payload == "-" else os.fsencode(payload)
    else:
        data = dumps(_parse_json(payload, "JSON"))
    url = _resolve_url(redis_url)
    with _reported(url):
        count = _loop.run(_publish(url, channel, data))
    click.echo(count)
    if count == 0:
        click.secho(f"nobody is listening on {channel!r}", fg="yellow", err=True)


async def _publish(url: str, channel: str, data: bytes) -> int:
    transport = transport_from_url(url)
    try:
        await transport.connect()
        return await transport.publish(channel, data)
    finally:
        await transport.close()


# -- daebus listen -----------------------------------------------------------------------
_RECONNECT_MAX_DELAY = 1.0


@cli.command(short_help="Print the messages on channels matching patterns.")
@click.argument("patterns", metavar="PATTERN...", nargs=-1, required=True)
@redis_url_option()
def listen(patterns: tuple[str, ...], redis_url: str | None) -> None:
    """Print each message on channels matching the glob PATTERNs until Ctrl-C.

    A line is the time it arrived, the channel, and the message: compact JSON if it is
    JSON, as it came otherwise. A lost connection is re-established.
    """
    url = _resolve_url(redis_url)
    unique = list(dict.fromkeys(patterns))
    with _stopped_by_sigterm():
        try:
            _listen(url, unique)
        except KeyboardInterrupt:
            click.secho("stopped", dim=True, err=True)


@contextmanager
def _stopped_by_sigterm() -> Iterator[None]:
    """While in the block, SIGTERM stops the command as Ctrl-C does (exit status 0)."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: signals are not ours to handle
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _listen(url: str, patterns: list[str]) -> None:
    # A plain redis-py PubSub rather than daebus's transport: here we can wait for the
    # server to confirm the subscriptions, and so say "listening" only once it is true.
    # Imported here: redis-py is slow to import, and only this command uses it directly.
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from .transport import _resp
    from .transport.redis import normalize_url

    options: dict[str, Any] = {"socket_connect_timeout": 2.0, "retry": Retry(NoBackoff(), 0)}
    if urlsplit(url).scheme.lower() != "unix":
        # A unix socket connection (the shared server's) takes no keepalive option.
        options["socket_keepalive"] = True
    try:
        client = redis.Redis.from_url(normalize_url(url), **options)
    except ValueError as exc:
        raise Failure(_without_password(f"bad Redis URL {url!r}: {exc}", url)) from None
    shown = redact_url(url)
    terminal = _is_terminal()
    connected_once = down = False
    delay = 0.05
    try:
        while True:
            pubsub = client.pubsub()
            try:
                _subscribe(pubsub, patterns)
                if connected_once:
                    click.secho(f"reconnected to {shown}", fg="yellow", err=True)
                else:
                    click.secho(
                        f"listening on {' '.join(patterns)} at {shown} (Ctrl-C to stop)",
                        dim=True,
                        err=True,
                    )
                connected_once, down = True, False
                delay, heard, asked = 0.05, time.monotonic(), False
                while True:  # a hung server is asked, then given up on, as services do
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        heard, asked = time.monotonic(), False
                        if message["type"] == "pmessage":
                            _print_message(message["channel"], message["data"], terminal)
                    elif time.monotonic() - heard >= _resp.SILENCE_TIMEOUT and asked:
                        raise redis.TimeoutError(f"no answer for {_resp.SILENCE_TIMEOUT:.0f} s")
                    elif time.monotonic() - heard >= _resp.HEALTH_CHECK_INTERVAL and not asked:
                        pubsub.ping()
                        asked = True
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                if not connected_once:
                    raise Failure(_without_password(f"Redis at {url}: {exc}", url)) from None
                if not down:
                    down = True
                    lost = f"lost the connection to {url} ({exc}); reconnecting"
                    click.secho(_without_password(lost, url), err=True)
                time.sleep(delay)
                delay = min(delay * 2, _RECONNECT_MAX_DELAY)
            finally:
                pubsub.close()
    finally:
        client.close()


def _subscribe(pubsub: Any, patterns: list[str]) -> None:
    """PSUBSCRIBE and wait for the server's confirmation of every pattern."""
    import redis

    pubsub.psubscribe(*patterns)
    pending = set(patterns)
    deadline = time.monotonic() + 10.0
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise redis.TimeoutError(f"no confirmation of PSUBSCRIBE {' '.join(pending)}")
        message = pubsub.get_message(timeout=remaining)
        if message is not None and message["type"] == "psubscribe":
            pending.discard(message["channel"].decode("utf-8", "replace"))


def _print_message(channel: bytes, data: bytes, terminal: bool) -> None:
    stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
    name = channel.decode("utf-8", "replace")
    text, is_json = _decode_message(data)
    if terminal:
        line = " ".join(
            [
                click.style(stamp, dim=True),
                click.style(name, fg="cyan", bold=True),
                text if is_json else click.style(text, fg="yellow"),
            ]
        )
    else:
        line = f"{stamp} {name} {text}"
    click.echo(line)


# -- daebus server -----------------------------------------------------------------------
@cli.command(short_help="Run, inspect or stop the shared embedded server.")
@click.option("--status", "show_status", is_flag=True, help="Say whether it runs, and where.")
@click.option("--stop", is_flag=True, help="Stop the shared server if it runs.")
def server(show_status: bool, stop: bool) -> None:
    """Run the shared embedded server in the foreground until Ctrl-C.

    It is the server every daebus process of yours uses when nothing is configured and
    nothing answers on localhost:6379 (a unix socket in your runtime folder).
    """
    from .server import run_shared_server, shared_server_status, stop_shared_server

    with _reported():
        if show_status:
            status = shared_server_status()
            if status.running:
                click.echo(f"running at {status.url} (pid {status.pid})")
            else:
                click.echo(f"not running (it would be at {status.url})")
            return
        if stop:
            pid = stop_shared_server()
            click.echo(f"stopped pid {pid}" if pid is not None else "not running")
            return
        code = run_shared_server()
    sys.exit(code)


# -- daebus demo -------------------------------------------------------------------------
@cli.command("demo", context_settings=CONTEXT_SETTINGS)
@click.option(
    "--keep-running", is_flag=True, help="Keep the services running after the demo, until Ctrl-C."
)
@redis_url_option(
    "The server, or 'embedded'. Default: $DAEBUS_REDIS_URL, else daebus's shared embedded "
    "server (never a Redis on localhost:6379 that was not named: it may run real services "
    "called shop or inventory)."
)
@click.pass_context
def demo_command(ctx: click.Context, keep_running: bool, redis_url: str | None) -> None:
    """Start two example services, make them talk, print the exchange."""
    # Imported here: importing the demo defines its two apps and loads the embedded
    # server's module, which no other command needs.
    from . import demo

    url = demo.configured_url(redis_url)
    if url:
        _check_url(url)
    with _reported(url):
        code = demo.run(redis_url, keep_running=keep_running)
    ctx.exit(code)


if __name__ == "__main__":
    main()
