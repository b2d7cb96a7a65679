"""``daebus dashboard``: serve the live page of the services and the bus until Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import click

from ..transport._url import redact_url
from ._failures import Failure, reported, without_password
from ._options import redis_url_option, resolve_url

__all__ = ["ENV_TOKEN", "dashboard"]

#: The environment variable a token may come from (out of sight of ``ps``).
ENV_TOKEN = "DAEBUS_DASHBOARD_TOKEN"


@click.command(short_help="Serve a live page of the services, the bus and the server.")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="The address to listen on. Anything but a loopback address requires a token.",
)
@click.option(
    "--port",
    "-p",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="The port to listen on (0: a free one).",
)
@click.option(
    "--token",
    envvar=ENV_TOKEN,
    metavar="TOKEN",
    default=None,
    help=f"Require this token (at least 8 characters), also read from ${ENV_TOKEN}. "
    "Off loopback a random one is made and printed when none is given.",
)
@redis_url_option()
def dashboard(host: str, port: int, token: str | None, redis_url: str | None) -> None:
    """Serve a live page of the services and the bus; call and publish from it.

    It shows the services and instances and what they run, the traffic per channel,
    latency and errors per action, durable backlogs and dead letters, live.

    It listens on 127.0.0.1 unless told otherwise: only this machine reaches it. On any
    other address every request must bring a token: open the URL printed, whose
    #token=... part the page keeps and sends with each request (browsers never send
    the part after # to a server, so it is in no log). Ctrl-C stops it.
    """
    from ..dashboard import Guard, is_loopback, new_token  # loads aiohttp
    from ..runtime.loop import run

    url = resolve_url(redis_url)
    if token is not None:
        try:
            Guard(token)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--token") from None
    made = token is None and not is_loopback(host)
    if made:
        token = new_token()
    with reported(url):
        try:
            run(_serve(url, host, port, token, made))
        except OSError as exc:
            raise Failure(without_password(f"cannot listen on {host}:{port}: {exc}", url)) from None
    click.secho("stopped", dim=True, err=True)


async def _serve(url: str, host: str, port: int, token: str | None, made: bool) -> None:
    from ..dashboard import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)

    def ready(bound: int) -> None:
        shown = f"[{host}]" if ":" in host else host
        address = f"http://{shown}:{bound}/"
        click.echo(f"daebus dashboard of {redact_url(url)} at {address} (Ctrl-C to stop)")
        if token is not None:
            where = f"{address}#token={token}" if made else f"{address}#token=<your token>"
            click.echo(f"open {where}")

    await serve(url, host, port, token=token, on_ready=ready, stop=stop)
