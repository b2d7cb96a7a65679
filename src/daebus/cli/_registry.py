"""``daebus services``, ``daebus inspect`` and ``daebus channels``: what runs, and where.

The first two read the service registry (:mod:`daebus.registry`); ``channels`` asks the
server which channels have subscribers and counts, with the registry's help, the
services' pattern listeners that match each one.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any, TypeVar

import click

from .. import protocol
from .._admin import open_admin
from ..health import DEFAULT_TIMEOUT
from ..registry import instances as registry_instances, services as registry_services
from ..transport._glob import compile_glob
from ._failures import NoServiceFailure, reported
from ._options import json_text, redis_url_option, resolve_url

__all__ = ["channels", "inspect_command", "services"]

F = TypeVar("F", bound=Callable[..., Any])


def _timeout_option() -> Callable[[F], F]:
    return click.option(
        "--timeout",
        "-t",
        type=click.FloatRange(min=0, min_open=True),
        default=DEFAULT_TIMEOUT,
        show_default=True,
        help="Seconds to wait for the server.",
    )


def _json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="JSON, for programs.")(func)


@click.command(short_help="List the running services.")
@_json_option
@_timeout_option()
@redis_url_option()
def services(as_json: bool, timeout: float, redis_url: str | None) -> None:
    """List the running services: instances, uptime, messages handled, errors, last seen.

    Read from the service registry, where every running instance refreshes its entry
    every 15 s: an instance that was killed is listed until its entry expires, three
    heartbeats later; one that stopped is gone at once. HANDLED and ERRORS add up
    requests, broadcasts and durable messages over every instance since it started.
    """
    url = resolve_url(redis_url)
    with reported(url):
        found = registry_services(url, timeout=timeout)
    if as_json:
        click.echo(json_text(found, pretty=True))
        return
    if not found:
        click.echo("no services running")
        return
    rows = [["SERVICE", "INSTANCES", "UPTIME", "IN FLIGHT", "HANDLED", "ERRORS", "LAST SEEN"]]
    for summary in found:
        rows.append(
            [
                summary["service"],
                str(summary["instances"]),
                duration(summary["uptime"]),
                str(summary["in_flight"]),
                str(summary["handled"]),
                str(summary["errors"]),
                f"{duration(summary['last_seen'])} ago",
            ]
        )
    _print_table(rows)


@click.command("inspect", short_help="Show what the instances of a service run.")
@click.argument("service")
@_json_option
@_timeout_option()
@redis_url_option()
def inspect_command(service: str, as_json: bool, timeout: float, redis_url: str | None) -> None:
    """Show each running instance of SERVICE, and what it runs.

    Host, pid, versions, start, counts; actions, listeners, jobs, HTTP routes,
    WebSocket handlers and health checks. Exits 5 when no instance of SERVICE is in the registry.
    """
    url = resolve_url(redis_url)
    with reported(url):
        found = [e for e in registry_instances(url, timeout=timeout) if e["service"] == service]
    if as_json:
        click.echo(json_text({"service": service, "instances": found}, pretty=True))
    if not found:
        raise NoServiceFailure(f"no instance of {service!r} is running (none is in the registry)")
    if as_json:
        return
    _echo(f"service {service}: {len(found)} instance{'s' * (len(found) != 1)}")
    for entry in found:
        _print_instance(entry)


def _print_instance(entry: dict[str, Any]) -> None:
    try:
        started = f"{datetime.datetime.fromtimestamp(entry.get('started', 0)):%Y-%m-%d %H:%M:%S}"
    except (OverflowError, ValueError, OSError):  # a forged time, past year 9999
        started = "?"
    click.echo()
    _echo(
        f"instance {entry.get('instance')} (host {entry.get('host')}, pid {entry.get('pid')}, "
        f"daebus {entry.get('daebus')}, Python {entry.get('python')})"
    )
    _echo(
        f"  {entry.get('state')} since {started} "
        f"(up {duration(entry.get('uptime'))}), last seen {duration(entry['last_seen'])} ago"
    )
    handled, errors = entry.get("handled") or {}, entry.get("errors") or {}
    _echo(
        f"  in flight {entry.get('in_flight', 0)}, queued {entry.get('queued', 0)}; "
        + ", ".join(
            f"{kind} {handled.get(kind, 0)} handled, {errors.get(kind, 0)} failed"
            for kind in ("requests", "broadcasts", "durable")
        )
    )
    _print_list("actions", entry.get("actions"))
    _print_list("workflows", entry.get("workflows"))
    _print_list("listeners", [_listener(listener) for listener in entry.get("listeners") or ()])
    _print_list("jobs", entry.get("jobs"))
    _print_list("threads", entry.get("threads"))
    http = entry.get("http")
    if isinstance(http, dict):
        _echo(f"  HTTP on {http.get('host')}:{http.get('port')}")
        routes = [f"{' '.join(r['methods'])} {r['path']}" for r in entry.get("routes") or ()]
        _print_list("routes", routes)
    if "sockets" in entry:
        _print_list("WebSocket handlers", entry.get("sockets"))
    _print_list("health checks", entry.get("health_checks"))


def _listener(listener: dict[str, Any]) -> str:
    traits = [
        trait
        for trait, on in (
            ("pattern", listener.get("pattern")),
            ("durable", listener.get("durable")),
            ("shared", listener.get("shared")),
            ("ordered", listener.get("ordered")),
        )
        if on
    ]
    if listener.get("group"):
        traits.append(f"group {listener['group']}")
    return f"{listener.get('channel')}" + (f" ({', '.join(traits)})" if traits else "")


def _print_list(label: str, items: Any) -> None:
    if items:
        _echo(f"  {label}: {', '.join(str(item) for item in items)}")


@click.command(short_help="List the channels that have subscribers.")
@click.argument("pattern", required=False)
@_json_option
@_timeout_option()
@redis_url_option()
def channels(pattern: str | None, as_json: bool, timeout: float, redis_url: str | None) -> None:
    """List the channels that have subscribers (those matching PATTERN, a Redis glob).

    For each: its KIND (a service's channel, a reply channel of a caller, daebus's own,
    or plain), its SUBSCRIBERS by name (PUBSUB NUMSUB), and PATTERNS: the pattern
    listeners of running services (from the registry) that match it. Redis counts
    pattern subscriptions only in total (PUBSUB NUMPAT, shown at the end): those of
    clients that are not daebus services (daebus listen, redis-cli PSUBSCRIBE, daebus
    0.0.31 services) cannot be matched to channels. A channel that only pattern
    subscribers receive is not listed: Redis lists channels subscribed by name.
    """
    url = resolve_url(redis_url)
    with reported(url):
        entries = registry_instances(url, timeout=timeout)
        with open_admin(url, timeout=timeout) as admin:
            names = admin.channels(pattern)
            counts = admin.subscribers(names)
            total_patterns = admin.patterns()
    found = describe_channels(names, counts, entries)
    known = sum(len(_patterns_of(entry)) for entry in entries)
    if as_json:
        result = {"channels": found, "pattern_subscriptions": total_patterns}
        result["patterns_known"] = known
        click.echo(json_text(result, pretty=True))
        return
    rows = [["CHANNEL", "KIND", "SUBSCRIBERS", "PATTERNS"]]
    for channel in found:
        rows.append(
            [
                channel["channel"],
                channel["kind"] + (f" ({channel['service']})" if channel.get("service") else ""),
                str(channel["subscribers"]),
                str(channel["patterns"]),
            ]
        )
    if found:
        _print_table(rows)
    else:
        click.echo("no channels have subscribers" + (f" matching {pattern!r}" if pattern else ""))
    click.echo(
        f"{total_patterns} pattern subscription{'s' * (total_patterns != 1)} on the server, "
        f"{known} of them by running daebus services"
    )


def describe_channels(
    names: list[str], counts: dict[str, int], entries: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each channel's kind, direct subscribers and matching pattern listeners."""
    known = {str(entry.get("service")) for entry in entries}
    matchers = [
        (str(entry.get("service")), compile_glob(glob))
        for entry in entries
        for glob in _patterns_of(entry)
    ]
    described = []
    for name in names:
        raw = name.encode("utf-8")
        kind = protocol.channel_kind(name, known)
        item: dict[str, Any] = {
            "channel": name,
            "kind": kind,
            "subscribers": counts.get(name, 0),
            "patterns": sum(1 for _, matches in matchers if matches(raw)),
        }
        if kind == "service":
            item["service"] = name.removesuffix(".workflows") if name not in known else name
        described.append(item)
    return described


def _patterns_of(entry: dict[str, Any]) -> set[str]:
    """The glob patterns an instance subscribes: one subscription each, however many use it."""
    return {
        str(listener.get("channel"))
        for listener in entry.get("listeners") or ()
        if listener.get("pattern") and not listener.get("durable")
    }


def duration(seconds: Any) -> str:
    """``seconds`` as ``1d2h``, ``3h05m``, ``4m07s`` or ``2.5s``."""
    if not isinstance(seconds, int | float):
        return "?"
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _echo(line: str) -> None:
    """Print a line made of what the registry holds, control characters escaped.

    Anyone who can write to the server can write an entry: it never reaches the
    terminal as it is.
    """
    click.echo(protocol.shorten(line, 4000))


def _print_table(rows: list[list[str]]) -> None:
    rows = [[protocol.shorten(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo(click.style(line.rstrip(), bold=True) if n == 0 else line.rstrip())
