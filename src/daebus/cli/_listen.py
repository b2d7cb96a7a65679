"""``daebus listen``: print the messages on channels matching patterns, until Ctrl-C."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import click

from .. import protocol
from ..protocol import shorten
from ..transport._url import redact_url
from . import _options
from ._failures import Failure, without_password
from ._options import decode_message, json_text, redis_url_option, resolve_url

__all__ = ["describe_envelope", "listen", "stopped_by_sigterm"]

_RECONNECT_MAX_DELAY = 1.0


@click.command(short_help="Print the messages on channels matching patterns.")
@click.argument("patterns", metavar="PATTERN...", nargs=-1, required=True)
@click.option(
    "--readable",
    "-r",
    is_flag=True,
    help="Show requests and replies as such: 'request ACTION id=... reply_to=...' and "
    "'reply STATUS id=... final|part', then the payload.",
)
@redis_url_option()
def listen(patterns: tuple[str, ...], readable: bool, redis_url: str | None) -> None:
    """Print each message on channels matching the glob PATTERNs until Ctrl-C.

    A line is the time it arrived, the channel, and the message: compact JSON if it is
    JSON, as it came otherwise. A lost connection is re-established. To follow the
    calls of a service: daebus listen -r SERVICE 'caller:*'.
    """
    url = resolve_url(redis_url)
    unique = list(dict.fromkeys(patterns))
    with stopped_by_sigterm():
        try:
            _listen(url, unique, readable)
        except KeyboardInterrupt:
            click.secho("stopped", dim=True, err=True)


@contextmanager
def stopped_by_sigterm() -> Iterator[None]:
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


def _listen(url: str, patterns: list[str], readable: bool = False) -> None:
    # A plain redis-py PubSub rather than daebus's transport: here we can wait for the
    # server to confirm the subscriptions, and so say "listening" only once it is true.
    # Imported here: redis-py is slow to import, and only this command uses it directly.
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from ..transport import _resp, is_sentinel_url
    from ..transport.redis import normalize_url

    options: dict[str, Any] = {"socket_connect_timeout": 2.0, "retry": Retry(NoBackoff(), 0)}
    if urlsplit(url).scheme.lower() != "unix":
        # A unix socket connection (the shared server's) takes no keepalive option.
        options["socket_keepalive"] = True
    try:
        if is_sentinel_url(url):  # the master its sentinels name, asked at each connect
            from ..transport.sentinel import sentinel_client

            client = sentinel_client(url, **options)
        else:
            client = redis.Redis.from_url(normalize_url(url), **options)
    except ValueError as exc:
        raise Failure(without_password(f"bad Redis URL {url!r}: {exc}", url)) from None
    shown = redact_url(url)
    terminal = _options.is_terminal()
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
                            _print_message(message["channel"], message["data"], terminal, readable)
                    elif time.monotonic() - heard >= _resp.SILENCE_TIMEOUT and asked:
                        raise redis.TimeoutError(f"no answer for {_resp.SILENCE_TIMEOUT:.0f} s")
                    elif time.monotonic() - heard >= _resp.HEALTH_CHECK_INTERVAL and not asked:
                        pubsub.ping()
                        asked = True
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                if not connected_once:
                    raise Failure(without_password(f"Redis at {url}: {exc}", url)) from None
                if not down:
                    down = True
                    lost = f"lost the connection to {url} ({exc}); reconnecting"
                    click.secho(without_password(lost, url), err=True)
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


def describe_envelope(data: bytes) -> str | None:
    """A request or a reply envelope as a line a person reads; None for anything else.

    ``request ACTION id=ID reply_to=CHANNEL PAYLOAD``; ``reply STATUS id=ID final PAYLOAD``
    (``part`` for a streamed part; an error's payload is its message).
    """
    try:
        message = protocol.decode_object(data)
    except protocol.BadMessageError:
        return None
    if "action" in message and ("reply_to" in message or "request_id" in message):
        words = ["request", shorten(message["action"]), f"id={shorten(message.get('request_id'))}"]
        if message.get("reply_to") is not None:
            words.append(f"reply_to={shorten(message['reply_to'])}")
        payload = protocol.request_payload(message)
    elif "status" in message and "request_id" in message:
        reply = protocol.decode_reply(data)
        words = ["reply", shorten(reply.status), f"id={shorten(reply.request_id)}"]
        words.append("final" if reply.final else "part")
        payload = reply.error_message if reply.is_error else reply.payload
    else:
        return None
    return " ".join([*words, json_text(payload)])


def _print_message(channel: bytes, data: bytes, terminal: bool, readable: bool = False) -> None:
    stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
    # Anyone can publish on any channel: control characters in its name are escaped.
    name = shorten(channel.decode("utf-8", "replace"), 4000)
    described = describe_envelope(data) if readable else None
    text, is_json = (described, True) if described is not None else decode_message(data)
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
