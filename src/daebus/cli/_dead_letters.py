"""``daebus dlq``: list, replay and purge the dead letters of durable channels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..dead_letters import DeadLetter, DeadLetters, dead_letter_queues
from ._failures import EXIT_FAILURE, Failure, reported
from ._options import CONTEXT_SETTINGS, json_text, redis_url_option, resolve_url

__all__ = ["dlq"]

F = TypeVar("F", bound=Callable[..., Any])

#: How much of an error a line of ``daebus dlq list`` shows.
_ERROR_WIDTH = 60


@click.group(context_settings=CONTEXT_SETTINGS, short_help="Dead letters of durable channels.")
def dlq() -> None:
    """List, replay and purge the messages durable listeners gave up on.

    A durable listener that fails on a message every try moves it to its group's
    dead-letter stream. GROUP is the consumer group (by default the service's name);
    without --group, the one group with dead letters on CHANNEL is meant.
    """


def _group_option(func: F) -> F:
    return click.option(
        "--group",
        "-g",
        metavar="GROUP",
        help="The consumer group. Default: the only group with dead letters on CHANNEL.",
    )(func)


def _selection_options(func: F) -> F:
    func = click.option("--all", "every", is_flag=True, help="Every dead letter there is now.")(
        func
    )
    return click.option(
        "--id", "ids", metavar="ID", multiple=True, help="A dead letter's id (repeatable)."
    )(func)


# -- daebus dlq list ---------------------------------------------------------------------
@dlq.command("list", short_help="List dead letters.")
@click.argument("channel", required=False)
@_group_option
@click.option("--limit", type=click.IntRange(min=1), help="Show at most this many per group.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for programs.")
@redis_url_option()
def list_command(
    channel: str | None, group: str | None, limit: int | None, as_json: bool, redis_url: str | None
) -> None:
    """List the dead letters of CHANNEL, oldest first; without CHANNEL, count them all.

    A line is the dead letter's id (what replay and purge take), the message's own id,
    how many times it was handed out, how long ago it gave up, and the error.
    """
    url = resolve_url(redis_url)
    with reported(url):
        if channel is None:
            _print_queues(url, as_json)
            return
        queues = _queues(url, channel, group)
        try:
            letters = [letter for queue in queues for letter in queue.list(limit)]
        finally:
            _close(queues)
    if as_json:
        click.echo(json_text([_letter_json(letter) for letter in letters], pretty=True))
        return
    if not letters:
        click.echo(f"no dead letters on {channel!r}" + (f" for group {group!r}" if group else ""))
        return
    groups = {letter.group for letter in letters}
    for name in sorted(groups):
        mine = [letter for letter in letters if letter.group == name]
        click.echo(f"{channel} group {name}: {len(mine)} dead letter{'s' * (len(mine) != 1)}")
        _print_table(mine)


def _print_queues(url: str, as_json: bool) -> None:
    queues = dead_letter_queues(url)
    try:
        counts = [(queue.channel, queue.group, queue.count()) for queue in queues]
    finally:
        _close(queues)
    if as_json:
        rows = [{"channel": c, "group": g, "count": n} for c, g, n in counts]
        click.echo(json_text(rows, pretty=True))
    elif not counts:
        click.echo("no dead letters")
    else:
        width = max(len(c) for c, _, _ in counts)
        group_width = max(len(g) for _, g, _ in counts)
        click.echo(f"{'CHANNEL':<{width}}  {'GROUP':<{group_width}}  COUNT")
        for c, g, n in counts:
            click.echo(f"{c:<{width}}  {g:<{group_width}}  {n}")


def _print_table(letters: list[DeadLetter]) -> None:
    rows = [
        (
            letter.id,
            letter.message_id,
            str(letter.deliveries),
            _age_text(letter.age),
            _one_line(letter.error),
        )
        for letter in letters
    ]
    header = ("ID", "MESSAGE ID", "TRIES", "AGE", "ERROR")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
        click.echo("  ".join([*cells, row[4]]).rstrip())


def _one_line(error: str) -> str:
    text = " ".join(error.split())
    return text if len(text) <= _ERROR_WIDTH else text[: _ERROR_WIDTH - 3] + "..."


def _age_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _letter_json(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "message_id": letter.message_id,
        "channel": letter.channel,
        "group": letter.group,
        "data": letter.data,
        "raw": None if letter.data is not None else letter.raw.decode("utf-8", "replace"),
        "error": letter.error,
        "deliveries": letter.deliveries,
        "consumer": letter.consumer,
        "time": letter.time.isoformat(),
    }


# -- daebus dlq replay / purge -----------------------------------------------------------
@dlq.command(short_help="Send dead letters back to their group.")
@click.argument("channel")
@_group_option
@_selection_options
@redis_url_option()
def replay(
    channel: str, group: str | None, ids: tuple[str, ...], every: bool, redis_url: str | None
) -> None:
    """Send dead letters of CHANNEL back to their group, to be handled again.

    Only that group gets them again: the channel's other groups skip them. Name them
    with --id (as `daebus dlq list` shows them), or give --all.
    """
    _check_selection(ids, every)
    url = resolve_url(redis_url)
    with reported(url):
        queue = _one_queue(url, channel, group)
        if queue is None:
            _nothing_there(channel, ids)
            return
        try:
            replayed = queue.replay_all() if every else queue.replay(ids)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--id") from None
        finally:
            queue.close()
    for old, new in replayed.items():
        click.echo(f"{old} -> {new}")
    count = len(replayed)
    plural = "s" * (count != 1)
    click.secho(f"replayed {count} dead letter{plural} to group {queue.group!r}", err=True)
    _missing(ids, replayed)


@dlq.command(short_help="Delete dead letters.")
@click.argument("channel")
@_group_option
@_selection_options
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@redis_url_option()
def purge(
    channel: str,
    group: str | None,
    ids: tuple[str, ...],
    every: bool,
    yes: bool,
    redis_url: str | None,
) -> None:
    """Delete dead letters of CHANNEL for good: --id ones, or --all.

    Asks first, unless --yes.
    """
    _check_selection(ids, every)
    url = resolve_url(redis_url)
    with reported(url):
        queue = _one_queue(url, channel, group)
        if queue is None:
            _nothing_there(channel, ids)
            return
        try:
            count = queue.count() if every else len(set(ids))
            if not yes:
                what = f"all {count}" if every else f"{count}"
                click.confirm(
                    f"Delete {what} dead letter{'s' * (count != 1)} of {channel!r} "
                    f"(group {queue.group!r})?",
                    abort=True,
                    err=True,
                )
            deleted = queue.purge_all() if every else queue.purge(ids)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--id") from None
        finally:
            queue.close()
    click.echo(f"deleted {deleted} dead letter{'s' * (deleted != 1)}")
    if not every and deleted < len(set(ids)):
        raise Failure(f"{len(set(ids)) - deleted} of the ids given were not dead letters here")


def _check_selection(ids: tuple[str, ...], every: bool) -> None:
    if bool(ids) == every:
        raise click.UsageError("give --id ID (one or more), or --all")


def _missing(ids: tuple[str, ...], done: dict[str, str]) -> None:
    missing = [i for i in dict.fromkeys(ids) if i not in done]
    if missing:
        click.secho(f"not found: {' '.join(missing)}", fg="yellow", err=True)
        raise click.exceptions.Exit(EXIT_FAILURE)


def _nothing_there(channel: str, ids: tuple[str, ...]) -> None:
    click.echo(f"no dead letters on {channel!r}")
    _missing(ids, {})


def _close(queues: list[DeadLetters]) -> None:
    for queue in queues:
        queue.close()


def _queues(url: str, channel: str, group: str | None) -> list[DeadLetters]:
    """The dead-letter streams of CHANNEL: GROUP's, or those holding letters."""
    if group is not None:
        return [DeadLetters(channel, group, redis_url=url)]
    return [queue for queue in dead_letter_queues(url) if queue.channel == channel]


def _one_queue(url: str, channel: str, group: str | None) -> DeadLetters | None:
    """GROUP's dead letters on CHANNEL, else the one group's that has some (None: no group)."""
    queues = _queues(url, channel, group)
    if len(queues) <= 1:
        return queues[0] if queues else None
    _close(queues)
    names = ", ".join(queue.group for queue in queues)
    raise Failure(
        f"several groups have dead letters on {channel!r} ({names}): name one with --group"
    )
