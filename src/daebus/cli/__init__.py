"""The ``daebus`` command: run, call, publish to and watch services from a shell.

Every command takes ``--redis-url``; without it the server is found as the library
finds it (:func:`daebus.config.resolve_redis_url`); ``--redis-url embedded`` names the
shared embedded server. A URL is shown (in errors and banners) with its password masked.
Output is coloured only when it goes to a terminal, and never when ``$NO_COLOR`` is set.
The exit codes are the ``EXIT_*`` constants, listed by ``daebus call --help``.

The group is here; each module of this package holds one group of commands.
"""

from __future__ import annotations

import click

from .. import __version__
from ._dashboard import dashboard
from ._dead_letters import dlq
from ._failures import (
    EXIT_ERROR_REPLY,
    EXIT_FAILURE,
    EXIT_NO_SERVICE,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
)
from ._health import health, stats
from ._listen import listen
from ._messages import call, publish
from ._options import (
    CONTEXT_SETTINGS,
    color_from_env as color_from_env,  # python -m daebus.demo uses it
)
from ._registry import channels, inspect_command, services
from ._run import load_app, run
from ._server import (
    demo_command as demo_command,  # python -m daebus.demo runs it
    server,
)

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


@click.group("daebus", context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="daebus")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Run, call, publish to and watch daebus services."""
    if color_from_env() is False:
        ctx.color = False


for _command in (
    run,
    call,
    publish,
    listen,
    services,
    inspect_command,
    health,
    channels,
    dlq,
    stats,
    server,
    demo_command,
    dashboard,
):
    cli.add_command(_command)


def main() -> None:
    """Entry point of the ``daebus`` script."""
    cli.main(prog_name="daebus")
