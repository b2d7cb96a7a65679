"""``daebus call`` and ``daebus publish``: send a request to a service, or a message."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from ..caller import DaebusCaller
from ..encoding import dumps
from ..exceptions import CallTimeoutError, RemoteError, ServiceUnavailableError
from ..runtime import loop as _loop
from ..transport import transport_from_url
from ..transport._url import redact_url
from . import _options
from ._failures import (
    EXIT_CODES_HELP,
    ErrorReplyFailure,
    NoServiceFailure,
    TimeoutFailure,
    reported,
)
from ._options import json_text, parse_json, redis_url_option, resolve_url

__all__ = ["call", "publish"]


@click.command(epilog=EXIT_CODES_HELP, short_help="Call an action of a service.")
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
@click.option(
    "--durable",
    is_flag=True,
    help="Leave the request on the service's request stream: it waits there for an "
    "instance until the timeout.",
)
@redis_url_option()
def call(
    service: str,
    action: str,
    payload: str,
    timeout: float,
    durable: bool,
    redis_url: str | None,
) -> None:
    """Call ACTION of SERVICE with a JSON payload (default {}; - reads stdin).

    Streamed parts are printed as they arrive, then the final reply: one JSON value a
    line when the output is not a terminal, so the reply is the last line.
    """
    data = parse_json(payload, "JSON")
    url = resolve_url(redis_url)
    terminal = _options.is_terminal()
    parts = 0

    def print_part(part: Any) -> None:
        nonlocal parts
        parts += 1
        if terminal:
            click.echo(click.style(f"part {parts}: ", dim=True) + json_text(part))
        else:
            click.echo(json_text(part))

    where = f"{service}.{action}"
    with reported(url), DaebusCaller(service, redis_url=url, timeout=timeout) as caller:
        try:
            reply = caller.send_request(action, data, on_progress=print_part, durable=durable)
        except RemoteError as exc:
            raise ErrorReplyFailure(f"{where} answered with an error: {exc.message}") from exc
        except ServiceUnavailableError as exc:
            raise NoServiceFailure(
                f"no service {service!r} is listening at {redact_url(url)}"
            ) from exc
        except CallTimeoutError as exc:
            if durable:
                raise TimeoutFailure(str(exc)) from exc
            raise TimeoutFailure(f"{where}: no reply within {timeout}s") from exc
    click.echo(json_text(reply, pretty=terminal))


@click.command(short_help="Publish a message on a channel.")
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
        data = dumps(parse_json(payload, "JSON"))
    url = resolve_url(redis_url)
    with reported(url):
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
