"""What a user does from the page: call an action, publish on a channel. Checked first.

A call goes through :class:`~daebus.AsyncDaebusCaller`, as any caller's does: the
service sees an ordinary request, and its streamed parts come back one by one. What
the page sends is checked before anything is sent (:class:`BadInputError`), and what
comes back is cut to :data:`PART_LIMIT` bytes a part and :data:`MAX_PARTS` parts,
so a service that streams without end cannot flood the page.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .. import encoding
from ..caller import AsyncDaebusCaller
from ..exceptions import (
    CallTimeoutError,
    DaebusError,
    RemoteError,
    ServiceBusyError,
    ServiceUnavailableError,
    TransportError,
)
from ..transport import Transport

__all__ = [
    "MAX_BODY",
    "MAX_PARTS",
    "PART_LIMIT",
    "BadInputError",
    "Call",
    "Publish",
    "call",
    "parse_call",
    "parse_publish",
    "publish",
]

#: The largest request body or WebSocket message the page may send, in bytes.
MAX_BODY = 256 * 1024
#: The longest service, action or channel name.
NAME_LIMIT = 200
#: Seconds a call waits at most (the default: :data:`DEFAULT_TIMEOUT`).
MAX_TIMEOUT = 120.0
DEFAULT_TIMEOUT = 10.0
#: The most parts of a streamed reply passed on to the page; the rest are counted.
MAX_PARTS = 1000
#: The most bytes of JSON of one part or reply passed on; longer ones are cut.
PART_LIMIT = 64 * 1024

#: Called with each part of a streamed reply (already cut to size).
PartSink = Callable[[Any], Awaitable[None]]


class BadInputError(DaebusError, ValueError):
    """What the page sent cannot be done: the message says why."""


class Call:
    """A call the page asked for, checked."""

    __slots__ = ("action", "payload", "service", "timeout")

    def __init__(self, service: str, action: str, payload: Any, timeout: float) -> None:
        self.service = service
        self.action = action
        self.payload = payload
        self.timeout = timeout


class Publish:
    """A message the page asked to publish, checked and encoded."""

    __slots__ = ("channel", "data")

    def __init__(self, channel: str, data: bytes) -> None:
        self.channel = channel
        self.data = data


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadInputError(f"{what} must be a non-empty string")
    if len(value) > NAME_LIMIT:
        raise BadInputError(f"{what} is longer than {NAME_LIMIT} characters")
    if not value.isprintable():
        raise BadInputError(f"{what} holds control characters")
    return value


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadInputError("expected a JSON object")
    return body


def parse_call(body: Any) -> Call:
    """``{"service", "action", "payload"?, "timeout"?}`` as a :class:`Call`."""
    body = _object(body)
    timeout = body.get("timeout", DEFAULT_TIMEOUT)
    if timeout is None:
        timeout = DEFAULT_TIMEOUT
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise BadInputError("timeout must be a number of seconds")
    if not 0 < timeout <= MAX_TIMEOUT:
        raise BadInputError(f"timeout must be more than 0 and at most {MAX_TIMEOUT:g} s")
    payload = body.get("payload", {})
    return Call(
        _name(body.get("service"), "service"),
        _name(body.get("action"), "action"),
        {} if payload is None else payload,
        float(timeout),
    )


def parse_publish(body: Any) -> Publish:
    """``{"channel", "message"}`` as a :class:`Publish`; the message is sent as JSON."""
    body = _object(body)
    if "message" not in body:
        raise BadInputError("message is missing (any JSON value)")
    return Publish(_name(body.get("channel"), "channel"), encoding.dumps(body["message"]))


def cut(value: Any) -> Any:
    """``value`` as it is if its JSON is short enough, else its JSON's start, as text."""
    try:
        data = encoding.dumps(value)
    except DaebusError:
        return repr(value)[:PART_LIMIT]
    if len(data) <= PART_LIMIT:
        return value
    text = data[:PART_LIMIT].decode("utf-8", "replace")
    return f"{text}... ({len(data)} bytes of JSON, cut)"


async def call(url: str, request: Call, on_part: PartSink) -> dict[str, Any]:
    """Make the call; the outcome as the page shows it.

    ``{"ok": True, "reply", "parts", "ms"}`` or ``{"ok": False, "error", "kind",
    "parts", "ms"}``; ``parts`` counts the streamed parts, of which the first
    :data:`MAX_PARTS` went to ``on_part``.
    """
    parts = 0

    async def progress(payload: Any) -> None:
        nonlocal parts
        parts += 1
        if parts <= MAX_PARTS:
            await on_part(cut(payload))

    started = time.monotonic()
    caller = AsyncDaebusCaller(request.service, redis_url=url, timeout=request.timeout)
    try:
        reply = await caller.send_request(
            request.action, request.payload, request.timeout, on_progress=progress
        )
    except (
        RemoteError,
        CallTimeoutError,
        TransportError,
        DaebusError,
        ValueError,
        OSError,
    ) as exc:
        return {
            "ok": False,
            "error": str(exc) or type(exc).__name__,
            "kind": _kind(exc),
            "parts": parts,
            "ms": _ms_since(started),
        }
    finally:
        await caller.aclose()
    return {"ok": True, "reply": cut(reply), "parts": parts, "ms": _ms_since(started)}


async def publish(transport: Transport, request: Publish, timeout: float = 5.0) -> int:
    """Publish the message; how many subscribers received it.

    Raises:
        TransportError: the server did not answer within ``timeout``.
    """
    try:
        return await asyncio.wait_for(transport.publish(request.channel, request.data), timeout)
    except asyncio.TimeoutError:
        raise TransportError(f"the server did not answer within {timeout:g} s") from None


def _kind(exc: BaseException) -> str:
    for kind in (
        ServiceBusyError,
        RemoteError,
        ServiceUnavailableError,
        CallTimeoutError,
        TransportError,
    ):
        if isinstance(exc, kind):
            return kind.__name__
    return type(exc).__name__


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)
