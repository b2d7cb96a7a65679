"""``daebus stats``: the server's health, and where the groups of durable channels stand."""

from __future__ import annotations

from typing import Any

import click

from ..health import DEFAULT_TIMEOUT, health_stats
from ..transport._url import redact_url
from ._failures import Failure, reported, without_password
from ._options import json_text, redis_url_option, resolve_url

__all__ = ["stats"]


@click.command(short_help="Show the server's health and the durable channels' groups.")
@click.argument("channels", metavar="[CHANNEL]...", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for programs.")
@click.option(
    "--timeout",
    "-t",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds to wait for the server.",
)
@redis_url_option()
def stats(channels: tuple[str, ...], as_json: bool, timeout: float, redis_url: str | None) -> None:
    """Show whether the server is healthy, and each durable CHANNEL's stream and groups.

    Without CHANNEL, every durable channel that has a stream. Per group: its consumers
    (instances), messages pending (handed out, not acknowledged), lag (not read yet)
    and dead letters. Exits 1 when the server cannot be reached.
    """
    url = resolve_url(redis_url)
    with reported(url):
        result = health_stats(url, list(channels) or None, timeout=timeout)
    if not result["healthy"]:
        result["error"] = without_password(result["error"], url)
    if as_json:
        click.echo(json_text(result, pretty=True))
        if not result["healthy"]:
            raise click.exceptions.Exit(1)
        return
    shown = redact_url(url)
    if not result["healthy"]:
        raise Failure(f"Redis at {shown} is not healthy: {result['error']}")
    click.echo(f"{shown}: healthy")
    if result.get("connected_clients") is not None:
        click.echo(
            f"  {result['connected_clients']} clients, {result['used_memory_human']} used, "
            f"{result['pattern_subscriptions']} pattern subscriptions"
        )
    if not result["channels"]:
        click.echo("no durable channels" if not channels else "")
    for channel, state in result["channels"].items():
        _print_channel(channel, state)


def _print_channel(channel: str, state: dict[str, Any]) -> None:
    length = state["length"]
    click.echo(f"channel {channel}: {length} message{'s' * (length != 1)}")
    if not state["groups"]:
        click.echo("  no groups")
    for group, figures in state["groups"].items():
        lag = "unknown" if figures["lag"] is None else figures["lag"]
        dead = figures["dead_letters"]
        line = (
            f"  group {group}: {figures['consumers']} consumers, {figures['pending']} pending, "
            f"lag {lag}, {dead} dead letter{'s' * (dead != 1)}"
        )
        click.echo(click.style(line, fg="yellow") if dead else line)
