"""``daebus stats`` and ``daebus health``: the server's health, and a service's readiness."""

from __future__ import annotations

import contextlib
from typing import Any

import click

from ..exceptions import DaebusError
from ..health import DEFAULT_TIMEOUT, health_stats
from ..protocol import shorten
from ..registry import service_health, service_info
from ..transport._url import redact_url
from ._failures import Failure, reported, without_password
from ._options import json_text, redis_url_option, resolve_url

__all__ = ["health", "stats"]


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


@click.command(short_help="Check that a service answers and is ready.")
@click.argument("service")
@click.option("--json", "as_json", is_flag=True, help="The answer as JSON, for programs.")
@click.option(
    "--timeout",
    "-t",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds to wait for the service's answer.",
)
@redis_url_option()
def health(service: str, as_json: bool, timeout: float, redis_url: str | None) -> None:
    """Ask SERVICE, live, whether it is ready: exit 0 if it is, 1 (with the reason) if not.

    One instance answers the health action (daebus:health) that every daebus service
    answers itself: it is ready once started and subscribed, while not stopping, and
    while each of its @app.health_check checks passes. Not ready: no instance runs, none
    answers within --timeout, it is starting or stopping, or a check failed. For a
    container's or a timer's health check. (The server itself: daebus stats.)
    """
    url = resolve_url(redis_url)
    with reported(url):
        answer = service_health(service, url, timeout=timeout)
    if answer.get("instance") is not None:
        with contextlib.suppress(DaebusError):  # a courtesy: the answer says what matters
            answer["instances"] = len(service_info(service, url, timeout=timeout)["instances"])
    if as_json:
        click.echo(json_text(answer, pretty=True))
    elif answer.get("ready"):
        # What the answer holds is escaped: whatever subscribes to the channel can answer.
        where = f" (instance {shorten(answer['instance'])})" if answer.get("instance") else ""
        count = answer.get("instances")
        more = f"; {count} instance{'s' * (count != 1)} running" if count else ""
        click.echo(f"{service}: ready{where}{more}")
        for name, outcome in answer["checks"].items():
            click.echo(f"  check {shorten(name)}: {shorten(outcome, 500)}")
    if not answer.get("ready"):
        if as_json:
            raise click.exceptions.Exit(1)
        reasons = shorten("; ".join(answer["reasons"] or ["unknown"]), 4000)
        raise Failure(without_password(f"{service} is not ready: {reasons}", url))
