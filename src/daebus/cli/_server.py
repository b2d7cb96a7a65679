"""``daebus server`` and ``daebus demo``: the shared embedded server, and a show on it."""

from __future__ import annotations

import sys

import click

from ._failures import reported
from ._options import CONTEXT_SETTINGS, check_url, redis_url_option

__all__ = ["demo_command", "server"]


@click.command(short_help="Run, inspect or stop the shared embedded server.")
@click.option("--status", "show_status", is_flag=True, help="Say whether it runs, and where.")
@click.option("--stop", is_flag=True, help="Stop the shared server if it runs.")
def server(show_status: bool, stop: bool) -> None:
    """Run the shared embedded server in the foreground until Ctrl-C.

    It is the server every daebus process of yours uses when nothing is configured and
    nothing answers on localhost:6379 (a unix socket in your runtime folder).
    """
    from ..server import live_claim, run_shared_server, shared_server_status, stop_shared_server

    with reported():
        if show_status:
            status = shared_server_status()
            if status.running:
                click.echo(f"running at {status.url} (pid {status.pid})")
            else:
                click.echo(f"not running (it would be at {status.url})")
            claim = live_claim()
            if claim is not None:
                click.echo(
                    f"claimed by {claim.by} (pid {claim.pid}): processes with no server "
                    "configured use it, even when a Redis answers on localhost:6379"
                )
            return
        if stop:
            pid = stop_shared_server()
            click.echo(f"stopped pid {pid}" if pid is not None else "not running")
            return
        code = run_shared_server()
    sys.exit(code)


@click.command("demo", context_settings=CONTEXT_SETTINGS)
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
    from .. import demo

    url = demo.configured_url(redis_url)
    if url:
        check_url(url)
    with reported(url):
        code = demo.run(redis_url, keep_running=keep_running)
    ctx.exit(code)
