"""The wire protocol of daebus 0.0.31: channel names and the request/response envelopes.

Every channel name and every envelope is built here and nowhere else.

- A service listens on the channel named exactly as the service.
- A caller listens on ``caller:<uuid4>`` for its replies.
- A request is ``{"action", "payload", "reply_to", "request_id", "service"}``.
- A reply is ``{"status", "payload", "request_id", "final"}``; ``final`` missing means
  true, errors are ``status: "error"`` with ``payload: {"error": message}``.
- A request without ``reply_to`` is answered on ``<service>.responses``.
- An error reply refusing a request unrun (the service is full, or stopping) also has
  ``payload.code == "busy"``; 0.0.31 callers ignore the extra key and read the message.
- A traced request also has ``traceparent`` (and ``tracestate``), W3C Trace Context,
  at its top level (:data:`TRACE_KEYS`); 0.0.31 keeps them in ``request.raw`` and
  ignores them. A durable stream entry carries them as extra fields.

The instances of one service share its requests through a few names of their own, none
of which a 0.0.31 peer sees: the membership record and the announcement channel
(:func:`instances_key`, :func:`instances_channel`) and one claim key per request
(:func:`claim_key`). See :mod:`daebus.runtime.instances`. A shared background job is
run by the instance holding its lease (:func:`lease_key`; see :mod:`daebus.runtime.jobs`).
Each instance keeps an entry in the service registry (:func:`registry_index`,
:func:`registry_key`; see :mod:`daebus.runtime.presence`), and answers the reserved
action :data:`HEALTH_ACTION` itself: a 0.0.31 service answers it as an unknown action.

Replies go only to channels that look like reply channels (:class:`ReplyChannels`), and
what a request brings along is cut to :data:`FIELD_LIMIT` characters wherever it is
echoed or logged (:func:`shorten`).
"""

from __future__ import annotations

import itertools
import os
import re
import reprlib
import uuid
from collections.abc import Iterable
from random import getrandbits
from typing import Any, NamedTuple

from . import encoding
from .transport._glob import compile_glob

__all__ = [
    "CHANNEL_KINDS",
    "CODE_BUSY",
    "DEFAULT_REPLY_CHANNELS",
    "DEFAULT_STREAM_MAXLEN",
    "ENVELOPE_KEYS",
    "FIELD_LIMIT",
    "HEALTH_ACTION",
    "RESERVED_ACTION_PREFIX",
    "STATUS_ERROR",
    "STATUS_PROGRESS",
    "STATUS_SUCCESS",
    "STREAM_DATA_FIELD",
    "STREAM_DEADLINE_FIELD",
    "STREAM_GROUP_FIELD",
    "TRACE_KEYS",
    "BadMessageError",
    "Reply",
    "ReplyChannels",
    "busy_payload",
    "channel_kind",
    "check_group",
    "claim_key",
    "dead_letter_key",
    "decode_object",
    "decode_reply",
    "encode_reply",
    "encode_request",
    "error_payload",
    "fallback_reply_channel",
    "instances_channel",
    "instances_key",
    "is_pattern",
    "lease_key",
    "new_reply_channel",
    "new_request_id",
    "order_lease_key",
    "recover_reply_address",
    "registry_index",
    "registry_key",
    "request_payload",
    "request_stream_key",
    "service_channel",
    "shorten",
    "stream_key",
    "workflow_channel",
]

STATUS_SUCCESS = "success"
STATUS_ERROR = "error"
STATUS_PROGRESS = "progress"

#: ``payload.code`` of an error reply refusing a request without running it, because
#: the service is full or stopping: the request is safe to send again.
CODE_BUSY = "busy"

#: Channels any service sends replies to, besides its own ``<service>.responses``:
#: 0.0.31's callers (``caller:<uuid4>``) and the documents' ``caller_123456``.
DEFAULT_REPLY_CHANNELS = ("caller:*", "caller_*")

#: The most characters of a request's field (action, request id, channel) that are
#: echoed in an error reply or written to a log line; longer ids and channels are refused.
FIELD_LIMIT = 200

#: The keys of a request envelope; anything else at the top level of a request that has
#: no ``payload`` key is the flat shape 0.0.31's ``send_to_service`` produced.
ENVELOPE_KEYS = frozenset({"action", "payload", "reply_to", "request_id", "service"})

#: The keys of the W3C Trace Context a traced request carries at its top level, beside
#: the envelope's, and a durable message as fields of its stream entry (see daebus.tracing).
TRACE_KEYS = ("traceparent", "tracestate")

_GLOB_CHARS = frozenset("*?[")
# A plain JSON string field (no escapes), found in bytes that did not decode as JSON.
_FIELD = r'"{}"\s*:\s*"([^"\\\x00-\x1f]{{1,200}})"'
_REPLY_TO = re.compile(_FIELD.format("reply_to").encode())
_REQUEST_ID = re.compile(_FIELD.format("request_id").encode())


class BadMessageError(ValueError):
    """Bytes from the wire that are not a JSON object (logged and dropped, or answered)."""


def service_channel(service: str) -> str:
    """The channel a service receives its requests on: the bare service name."""
    return service


def workflow_channel(service: str) -> str:
    """The channel of ``@app.workflow`` messages for a service."""
    return f"{service}.workflows"


def instances_key(service: str) -> str:
    """The membership record of a service's instances: a sorted set, id -> expiry (ms)."""
    return f"daebus:instances:{service}"


def instances_channel(service: str) -> str:
    """The channel a service's instances announce their arrivals and departures on."""
    return f"daebus:instances:{service}"


def claim_key(service: str, digest: str) -> str:
    """The key an instance sets to take one request of ``service`` (``digest``: its hash)."""
    return f"daebus:claim:{service}:{digest}"


def lease_key(service: str, job: str) -> str:
    """The lease of a shared background job: its value is the holding instance's id."""
    return f"daebus:lease:{service}:{job}"


#: Action names the runtime answers itself; a user's action may not start so.
RESERVED_ACTION_PREFIX = "daebus:"
#: The action every daebus service answers with its readiness (see daebus.readiness).
HEALTH_ACTION = "daebus:health"


def registry_index() -> str:
    """The service registry's index: a sorted set of entry keys, scored with their expiry."""
    return "daebus:registry"


def registry_key(service: str, instance: str) -> str:
    """The registry entry of one running instance: its JSON, expiring unless refreshed."""
    return f"daebus:registry:{service}:{instance}"


#: The longest registry entry a reader reads: a longer one is skipped as junk, so an
#: instance shortens its own to fit (see daebus.runtime.presence).
REGISTRY_ENTRY_LIMIT = 256 * 1024


#: What :func:`channel_kind` says of a channel.
CHANNEL_KINDS = ("service", "reply", "daebus", "plain")


def channel_kind(channel: str, services: Iterable[str] = ()) -> str:
    """Whether ``channel`` is a service's (of ``services``), a reply, daebus's own, or plain.

    A service's channels are its name and ``<service>.workflows``; reply channels are
    those callers listen on (``caller:*``, ``caller_*``, ``<service>.responses``);
    daebus's own start with ``daebus:`` (the instances' announcements). A service's
    channel is known as such only when ``services`` names it.
    """
    known = services if isinstance(services, (set, frozenset)) else set(services)
    if channel in known or (
        channel.endswith(".workflows") and channel[: -len(".workflows")] in known
    ):
        return "service"
    if channel.startswith(("caller:", "caller_")) or channel.endswith(".responses"):
        return "reply"
    if channel.startswith("daebus:"):
        return "daebus"
    return "plain"


#: How many messages a durable channel's stream keeps by default (``XADD MAXLEN ~``).
DEFAULT_STREAM_MAXLEN = 10_000
#: The field of a stream entry that holds a durable message's JSON.
STREAM_DATA_FIELD = "data"
#: The field of a replayed dead letter that names the one group it is for: the other
#: groups of its channel, which handled it already, acknowledge it without running it.
STREAM_GROUP_FIELD = "group"
#: The field of a durable request: when (ms since the epoch) its caller stops waiting.
STREAM_DEADLINE_FIELD = "deadline"


def stream_key(channel: str) -> str:
    """The stream that holds a durable channel's messages (see docs/durable.md)."""
    return f"daebus:stream:{channel}"


def check_group(group: str) -> str:
    """``group`` if it can name a consumer group; ValueError if it holds a ``:``.

    The keys of a group's dead letters and of its turn end with ``:<group>`` or start
    with ``<group>:``: a ``:`` in the name would make two groups' keys the same.
    """
    if ":" in group:
        raise ValueError(f"a consumer group's name cannot hold ':': {group!r}")
    return group


def dead_letter_key(channel: str, group: str) -> str:
    """The stream of one group's messages on ``channel`` that failed every try."""
    return f"daebus:dead:{channel}:{check_group(group)}"


def order_lease_key(channel: str, group: str) -> str:
    """The lease of the one instance that reads an ordered durable listener's group."""
    return f"daebus:order:{check_group(group)}:{channel}"


def request_stream_key(service: str) -> str:
    """The stream of a service's durable requests, read by its instances as one group."""
    return f"daebus:requests:{service}"


def new_reply_channel() -> str:
    """A fresh per-caller reply channel, ``caller:<uuid4>``."""
    return f"caller:{uuid.uuid4()}"


def fallback_reply_channel(service: Any) -> str | None:
    """Where a request without ``reply_to`` is answered: ``<service>.responses``.

    None when the request's ``service`` field is not a non-empty string (0.0.31 made
    channels such as ``None.responses`` of it).
    """
    if type(service) is not str or not service:
        return None
    return f"{service}.responses"


def _escape_glob(name: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", name)


_UNKNOWN = object()


class ReplyChannels:
    """Which channels a service sends replies to: what a ``reply_to`` may name.

    Allowed: :data:`DEFAULT_REPLY_CHANNELS`, ``<service>.responses`` and the glob
    patterns given as ``allowed``. Never a channel the service itself listens on (its
    request and workflow channels, its listeners' channels and patterns), so that a
    request cannot make the service write to another service's request channel, to
    listeners, or to itself.
    """

    def __init__(self, service: str, allowed: Iterable[str] = ()) -> None:
        fallback = fallback_reply_channel(service)
        globs = [*DEFAULT_REPLY_CHANNELS, *([_escape_glob(fallback)] if fallback else []), *allowed]
        self.globs = tuple(globs)
        self._allowed = [compile_glob(glob) for glob in self.globs]
        self._own = frozenset(
            {service_channel(service), workflow_channel(service), instances_channel(service)}
        )
        self._listened: frozenset[str] = frozenset()
        self._patterns: list[Any] = []
        # reply_to -> why it is refused (None: allowed). Callers keep one reply channel
        # for their lifetime, so this is asked again and again with the same few.
        self._verdicts: dict[str, str | None] = {}

    def listening_on(self, channels: Iterable[str], patterns: Iterable[str]) -> None:
        """Tell the channels and patterns the service's listeners receive."""
        self._listened = frozenset(channels)
        self._patterns = [compile_glob(pattern) for pattern in patterns]
        self._verdicts.clear()

    def refusal(self, channel: Any) -> str | None:
        """Why replies may not go to ``channel``; None if they may."""
        if type(channel) is not str:
            return f"not a string but {type(channel).__name__}"
        verdict = self._verdicts.get(channel, _UNKNOWN)
        if verdict is _UNKNOWN:
            verdict = self._judge(channel)
            if len(self._verdicts) >= 1000:  # a flood of junk names: start again
                self._verdicts.clear()
            self._verdicts[channel] = verdict
        return verdict  # type: ignore[return-value]

    def _judge(self, channel: str) -> str | None:
        if len(channel) > FIELD_LIMIT:
            return f"over {FIELD_LIMIT} characters long"
        try:
            raw = channel.encode("utf-8")
        except UnicodeEncodeError:
            return "not valid Unicode"
        if channel in self._own:
            return "the service's own channel"
        if channel in self._listened or any(match(raw) for match in self._patterns):
            return "a channel the service listens on"
        if not any(match(raw) for match in self._allowed):
            return f"not a reply channel (allowed: {', '.join(self.globs)})"
        return None

    def fallback(self, service: Any) -> str | None:
        """Where a request without ``reply_to`` is answered, if anywhere."""
        channel = fallback_reply_channel(service)
        if channel is None or self.refusal(channel) is not None:
            return None
        return channel


_short_repr = reprlib.Repr()
_short_repr.maxstring = _short_repr.maxother = FIELD_LIMIT


def shorten(value: Any, limit: int = FIELD_LIMIT) -> str:
    """``value`` as text of at most about ``limit`` characters, for a log or a reply.

    A longer string keeps its first ``limit`` characters and says how long it was.
    Control characters are escaped, so that a field cannot forge lines in a log.
    """
    text = value if isinstance(value, str) else _short_repr.repr(value)
    length = len(text)
    if length > limit:
        text = text[:limit]
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if length <= limit else f"{text}... ({length} characters)"


# Request ids: a random UUID4 prefix per process, then a counter from a random start in
# the last group. Unique among one process's requests, fresh in a forked child.
_ID_LAST_GROUP = (1 << 48) - 1
_id_prefix = ""
_id_counter = itertools.count()


def _new_id_series() -> None:
    global _id_prefix, _id_counter
    bits = getrandbits(80)
    head = f"{bits >> 48:08x}-{(bits >> 32) & 0xFFFF:04x}"
    # The version (4) and the RFC 4122 variant (binary 10) in their places.
    middle = f"4{(bits >> 20) & 0xFFF:03x}-{0x8000 | (bits >> 6) & 0x3FFF:04x}"
    _id_prefix = f"{head}-{middle}-"
    _id_counter = itertools.count(getrandbits(48))


_new_id_series()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_id_series)


def new_request_id() -> str:
    """A fresh request id, a UUID4 string as 0.0.31 sends.

    Cheaper than ``uuid.uuid4()`` (a system call and a ``UUID`` object per id, a fifth
    of the cost of a call): an id only has to be unique among the requests waiting on
    one reply channel.
    """
    return f"{_id_prefix}{next(_id_counter) & _ID_LAST_GROUP:012x}"


def is_pattern(channel: str) -> bool:
    """True if ``channel`` is a Redis glob pattern (``user:*``) rather than a plain name."""
    return not _GLOB_CHARS.isdisjoint(channel)


def encode_request(
    action: str,
    payload: Any,
    reply_to: str | None,
    request_id: str | None,
    service: str,
    trace: dict[str, str] | None = None,
) -> bytes:
    """Encode the 5-key request envelope, in 0.0.31's key order.

    ``trace``: the caller's trace context (:data:`TRACE_KEYS`), added after the five.
    """
    envelope = {
        "action": action,
        "payload": payload,
        "reply_to": reply_to,
        "request_id": request_id,
        "service": service,
    }
    if trace:
        for key in TRACE_KEYS:
            value = trace.get(key)
            if value:
                envelope[key] = value
    return encoding.dumps(envelope)


def encode_reply(status: str, payload: Any, request_id: Any, final: bool) -> bytes:
    """Encode the 4-key reply envelope, in 0.0.31's key order."""
    return encoding.dumps(
        {"status": status, "payload": payload, "request_id": request_id, "final": final}
    )


def error_payload(error: Any) -> dict[str, str]:
    """The payload of an error reply: ``{"error": str(error)}``."""
    return {"error": str(error)}


def busy_payload(message: str) -> dict[str, str]:
    """The payload of an error reply refusing a request unrun (:data:`CODE_BUSY`)."""
    return {"error": message, "code": CODE_BUSY}


def progress_payload(payload: Any, percentage: float | None) -> Any:
    """``payload`` with ``progress_percentage`` (clamped to 0..100) added, as 0.0.31 did.

    A dict gets the key; anything else is wrapped as ``{"data": payload, ...}``.
    """
    if percentage is None:
        return payload
    clamped = max(0.0, min(100.0, float(percentage)))
    if isinstance(payload, dict):
        return {**payload, "progress_percentage": clamped}
    return {"data": payload, "progress_percentage": clamped}


def decode_object(data: bytes | str) -> dict[str, Any]:
    """Decode a message that must be a JSON object.

    Raises:
        BadMessageError: the bytes are not UTF-8 JSON, or the JSON is not an object.
    """
    try:
        value = encoding.loads(data)
    except ValueError as exc:
        raise BadMessageError(f"not valid UTF-8 JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadMessageError(f"expected a JSON object, got {type(value).__name__}")
    return value


def recover_reply_address(data: bytes) -> tuple[str, str | None] | None:
    """``(reply_to, request_id)`` of a request that is not valid JSON, if they can be read.

    Lets a malformed request still get an error reply instead of a timeout.
    """
    reply_to = _REPLY_TO.search(data)
    if reply_to is None:
        return None
    request_id = _REQUEST_ID.search(data)
    return (
        reply_to.group(1).decode("utf-8", "replace"),
        request_id.group(1).decode("utf-8", "replace") if request_id else None,
    )


def request_payload(message: dict[str, Any]) -> Any:
    """The payload of a decoded request, tolerant of 0.0.31's variants.

    A string payload is JSON-decoded when it is JSON (0.0.31 did so) and kept as the
    string otherwise; a request without a ``payload`` key is the flat shape, whose
    non-envelope keys are the payload.
    """
    if "payload" not in message:
        return {k: v for k, v in message.items() if k not in ENVELOPE_KEYS}
    payload = message["payload"]
    if isinstance(payload, str):
        try:
            return encoding.loads(payload)
        except ValueError:
            return payload
    return payload


_new_tuple = tuple.__new__


class Reply(NamedTuple):
    """One decoded reply message (a named tuple: cheap to make, one per reply)."""

    status: str
    payload: Any
    request_id: Any
    final: bool

    @property
    def is_error(self) -> bool:
        """True for an error reply."""
        return self.status == STATUS_ERROR

    @property
    def error_message(self) -> str:
        """The error text of an error reply (0.0.31's ``payload.error``)."""
        if isinstance(self.payload, dict):
            return str(self.payload.get("error", "Unknown error"))
        return str(self.payload) if self.payload is not None else "Unknown error"

    @property
    def error_code(self) -> Any:
        """``payload.code`` of an error reply (:data:`CODE_BUSY`), else None."""
        return self.payload.get("code") if isinstance(self.payload, dict) else None


def decode_reply(data: bytes | str) -> Reply:
    """Decode a reply envelope; a missing ``final`` means final, as in 0.0.31."""
    message = decode_object(data)
    get = message.get
    status = get("status", STATUS_SUCCESS)
    # tuple.__new__ makes the named tuple without its __new__, a Python function: one
    # is made per reply.
    return _new_tuple(
        Reply,
        (
            status if type(status) is str else str(status),
            get("payload", {}),
            get("request_id"),
            get("final", True) is not False,
        ),
    )
