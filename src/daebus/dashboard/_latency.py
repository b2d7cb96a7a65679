"""Latency per action, seen from outside: a request on a service's channel, then its reply.

A request names where its replies go (``reply_to``, else ``<service>.responses``) and
carries a ``request_id``; its final reply on that channel with that id ends it. The
time between the two, as this process saw them, is the call's latency: the network
and the server's queueing included, as a caller would feel it.

Memory is bounded: a request whose reply never comes is forgotten after
:data:`EXPIRE_AFTER` seconds, at most :data:`MAX_PENDING` wait at once (the oldest
goes first), an action keeps its last :data:`SAMPLES` latencies, and past
:data:`MAX_ACTIONS` actions the others share one row.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .. import protocol

__all__ = ["EXPIRE_AFTER", "MAX_ACTIONS", "MAX_PENDING", "SAMPLES", "LatencyTable"]

#: Seconds a request waits for its reply before it is forgotten (counted as unanswered).
EXPIRE_AFTER = 60.0
#: The most requests waiting for a reply at once.
MAX_PENDING = 10_000
#: The most actions with a row of their own.
MAX_ACTIONS = 500
#: The latencies an action keeps, the latest: its percentiles are over these.
SAMPLES = 1000
#: The row of actions that found the table full.
OTHER = ("(other)", "(other actions)")


class _Waiting(NamedTuple):
    action: tuple[str, str]
    sent: float


@dataclass
class _Action:
    calls: int = 0
    replies: int = 0
    errors: int = 0
    busy: int = 0
    parts: int = 0
    unanswered: int = 0
    last_error: str | None = None
    at_tick: int = 0
    rate: float = 0.0
    samples: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))


class LatencyTable:
    """Requests waiting for their replies, and what the replies took, per action."""

    def __init__(
        self,
        *,
        max_pending: int = MAX_PENDING,
        expire_after: float = EXPIRE_AFTER,
        max_actions: int = MAX_ACTIONS,
    ) -> None:
        self.max_pending = max_pending
        self.expire_after = expire_after
        self.max_actions = max_actions
        # (reply channel, request id) -> the request; in the order they were sent, so
        # that the oldest are at the front, to expire or drop.
        self._waiting: dict[tuple[str, str], _Waiting] = {}
        self._actions: dict[tuple[str, str], _Action] = {}
        self._last_tick: float | None = None
        #: Requests dropped unanswered because too many waited.
        self.dropped = 0

    @property
    def pending(self) -> int:
        """Requests waiting for their final reply."""
        return len(self._waiting)

    def request(self, channel: str, message: dict[str, Any], now: float) -> None:
        """A request (decoded) seen on ``channel``, the service's."""
        action = self._row((_name(channel), _name(message.get("action"))))
        action.calls += 1
        request_id = message.get("request_id")
        reply_to = message.get("reply_to")
        if reply_to is None:
            reply_to = protocol.fallback_reply_channel(message.get("service"))
        if not isinstance(reply_to, str) or not isinstance(request_id, str | int):
            return  # no reply will come, or none we could tell apart
        key = (reply_to, str(request_id))
        self._waiting.pop(key, None)  # an id sent again: timed from now
        while len(self._waiting) >= self.max_pending:
            self._forget(next(iter(self._waiting)))
            self.dropped += 1
        self._waiting[key] = _Waiting(self._key_of(action, channel, message), now)

    def reply(self, channel: str, message: dict[str, Any], now: float) -> None:
        """A reply (decoded) seen on ``channel``: a part, or the end of a call."""
        request_id = message.get("request_id")
        if not isinstance(request_id, str | int):
            return
        key = (channel, str(request_id))
        waiting = self._waiting.get(key)
        if waiting is None:
            return  # a request we did not see (sent before we looked, or durable)
        action = self._actions.get(waiting.action) or self._row(OTHER)
        if message.get("final", True) is False:
            action.parts += 1
            return
        del self._waiting[key]
        action.replies += 1
        action.samples.append(max(0.0, now - waiting.sent))
        if message.get("status") == protocol.STATUS_ERROR:
            payload = message.get("payload")
            error = payload.get("error") if isinstance(payload, dict) else payload
            action.errors += 1
            if isinstance(payload, dict) and payload.get("code") == protocol.CODE_BUSY:
                action.busy += 1
            action.last_error = protocol.shorten(error if isinstance(error, str) else repr(error))

    def tick(self, now: float) -> None:
        """Forget requests waiting too long; take each action's calls per second."""
        while self._waiting:
            key = next(iter(self._waiting))
            if now - self._waiting[key].sent < self.expire_after:
                break
            self._forget(key)
        elapsed = None if self._last_tick is None else now - self._last_tick
        self._last_tick = now
        for action in self._actions.values():
            fresh = action.calls - action.at_tick
            action.at_tick = action.calls
            action.rate = fresh / elapsed if elapsed and elapsed > 0 else 0.0

    def rows(self) -> list[dict[str, Any]]:
        """One row per action, by service then action, with its percentiles in ms."""
        found = []
        for (service, name), action in sorted(self._actions.items()):
            ordered = sorted(action.samples)
            found.append(
                {
                    "service": service,
                    "action": name,
                    "calls": action.calls,
                    "rate": round(action.rate, 2),
                    "replies": action.replies,
                    "errors": action.errors,
                    "busy": action.busy,
                    "parts": action.parts,
                    "unanswered": action.unanswered,
                    "last_error": action.last_error,
                    "p50": _percentile(ordered, 50),
                    "p90": _percentile(ordered, 90),
                    "p99": _percentile(ordered, 99),
                    "max": round(ordered[-1] * 1000, 3) if ordered else None,
                    "samples": len(ordered),
                }
            )
        return found

    def _row(self, key: tuple[str, str]) -> _Action:
        action = self._actions.get(key)
        if action is None:
            if len(self._actions) >= self.max_actions:
                key = OTHER
                action = self._actions.get(key)
            if action is None:
                action = self._actions[key] = _Action()
        return action

    def _key_of(self, action: _Action, channel: str, message: dict[str, Any]) -> tuple[str, str]:
        key = (_name(channel), _name(message.get("action")))
        return key if self._actions.get(key) is action else OTHER

    def _forget(self, key: tuple[str, str]) -> None:
        waiting = self._waiting.pop(key)
        action = self._actions.get(waiting.action)
        if action is not None:
            action.unanswered += 1


def _name(value: Any) -> str:
    return protocol.shorten(value) if isinstance(value, str) else protocol.shorten(repr(value))


def _percentile(ordered: list[float], percent: float) -> float | None:
    """The nearest-rank percentile of sorted latencies in seconds, in milliseconds."""
    if not ordered:
        return None
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return round(ordered[rank - 1] * 1000, 3)
