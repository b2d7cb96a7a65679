"""Dead letters: the durable messages a group gave up on, to list, replay and purge.

A durable listener that fails on a message every try moves it to its group's
dead-letter stream (:func:`daebus.protocol.dead_letter_key`) with the error, and goes
on with the next message. :class:`DeadLetters` is that stream for one ``(channel,
group)``::

    from daebus import DeadLetters

    billing = DeadLetters("orders", "billing")
    for letter in billing.list():
        print(letter.message_id, letter.deliveries, letter.error)
    billing.replay([letter.id])   # handled again by the group "billing" only
    billing.purge_all()

A replayed message goes back on the channel's stream marked for its group alone: the
other groups of the channel, which handled it already, acknowledge it without running
it. It is added there before it leaves the dead-letter stream, so a crash in between
leaves it in both (to be handled twice), never in neither.

Calls block, and may be made from a script or from a thread of a handler (not from
the service's event loop). The server is the one the library would use
(``$DAEBUS_REDIS_URL``, ...; see :func:`daebus.config.resolve_redis_url`) unless
``redis_url`` names one; ``memory://`` URLs work on that in-process broker.
"""

from __future__ import annotations

import builtins
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from . import encoding, protocol
from ._admin import Admin, open_admin
from .transport.base import StreamEntry

__all__ = ["DeadLetter", "DeadLetters", "dead_letter_queues"]

#: How many dead letters one read of a replay or a listing takes at a time.
_BATCH = 100
_ID = re.compile(r"^\d+-\d+$")
_DEAD_PREFIX = protocol.dead_letter_key("", "").removesuffix(":")  # "daebus:dead:"


@dataclass(frozen=True)
class DeadLetter:
    """One message a group gave up on, as its dead-letter stream keeps it."""

    #: Its id in the dead-letter stream: what :meth:`DeadLetters.replay` and
    #: :meth:`DeadLetters.purge` take.
    id: str
    #: Its id in the channel's stream, as the handler saw it (``request.message_id``).
    message_id: str
    channel: str
    group: str
    #: The message, decoded from its JSON; None when it is not JSON (see :attr:`raw`).
    data: Any
    #: The message as it was sent: UTF-8 JSON, normally.
    raw: bytes
    #: The handler's last error (``"ValueError: ..."``), cut to 2,000 characters.
    error: str
    #: How many times it was handed out.
    deliveries: int
    #: The instance that gave up on it.
    consumer: str
    #: When it was moved to the dead-letter stream (UTC).
    time: datetime

    @property
    def age(self) -> float:
        """Seconds since it was moved to the dead-letter stream."""
        return max(0.0, time.time() - self.time.timestamp())


class DeadLetters:
    """The dead-letter stream of one group on one durable channel.

    Opens its connection on first use; :meth:`close` (or ``with``) lets it go.
    """

    def __init__(self, channel: str, group: str, *, redis_url: str | None = None) -> None:
        self.channel = channel
        self.group = group
        self.redis_url = redis_url
        #: The name of the dead-letter stream.
        self.key = protocol.dead_letter_key(channel, group)
        self._admin: Admin | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<DeadLetters {self.channel!r} group={self.group!r}>"

    def __enter__(self) -> DeadLetters:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (the next call opens one again)."""
        with self._lock:
            admin, self._admin = self._admin, None
        if admin is not None:
            admin.close()

    @property
    def admin(self) -> Admin:
        """The connection to the server (opened on first use)."""
        with self._lock:
            if self._admin is None:
                self._admin = open_admin(self.redis_url)
            return self._admin

    # -- reading ---------------------------------------------------------------------
    def count(self) -> int:
        """How many dead letters there are."""
        return self.admin.stream_length(self.key)

    def list(self, limit: int | None = None) -> builtins.list[DeadLetter]:
        """The dead letters, oldest first; at most ``limit`` of them if given."""
        entries = self.admin.stream_range(self.key, count=limit)
        return [self._letter(entry) for entry in entries]

    def get(self, letter_id: str) -> DeadLetter | None:
        """The dead letter of id ``letter_id``, None if there is none."""
        entries = self.admin.stream_range(self.key, _checked(letter_id), letter_id, 1)
        return self._letter(entries[0]) if entries else None

    def _letter(self, entry: StreamEntry) -> DeadLetter:
        fields = entry.fields
        raw = fields.get(protocol.STREAM_DATA_FIELD, b"")
        try:
            data = encoding.loads(raw)
        except ValueError:
            data = None
        ms = int(entry.id.partition("-")[0])
        return DeadLetter(
            id=entry.id,
            message_id=_field(fields, "id"),
            channel=_field(fields, "channel") or self.channel,
            group=_field(fields, "group") or self.group,
            data=data,
            raw=raw,
            error=_field(fields, "error"),
            deliveries=int(_field(fields, "deliveries") or 0),
            consumer=_field(fields, "consumer"),
            time=datetime.fromtimestamp(ms / 1000, tz=timezone.utc),
        )

    # -- replaying -------------------------------------------------------------------
    def replay(self, ids: Iterable[str]) -> dict[str, str]:
        """Send the dead letters ``ids`` back to the group; they leave this stream.

        Returns each replayed letter's new message id, by its dead-letter id; an id
        that is not (or no longer) here is left out.

        Raises:
            ValueError: an id is not a stream id (``<ms>-<seq>``).
            TransportError: the server cannot be reached.
        """
        replayed: dict[str, str] = {}
        for letter_id in dict.fromkeys(_checked(i) for i in ids):
            entries = self.admin.stream_range(self.key, letter_id, letter_id, 1)
            if entries:
                replayed[letter_id] = self._replay(entries[0])
        return replayed

    def replay_all(self) -> dict[str, str]:
        """Send every dead letter there is now back to the group (see :meth:`replay`).

        Letters that arrive meanwhile (a replayed message that fails again, say) stay.
        """
        last = self.admin.stream_last_id(self.key)
        replayed: dict[str, str] = {}
        start = "-"
        while last is not None:
            batch = self.admin.stream_range(self.key, start, last, _BATCH)
            for entry in batch:
                replayed[entry.id] = self._replay(entry)
            if len(batch) < _BATCH:
                break
            start = _after(batch[-1].id)
        return replayed

    def _replay(self, entry: StreamEntry) -> str:
        fields = {protocol.STREAM_GROUP_FIELD: self.group.encode()}
        data = entry.fields.get(protocol.STREAM_DATA_FIELD)
        if data is not None:
            fields = {protocol.STREAM_DATA_FIELD: data, **fields}
        # Added first, deleted second: a crash in between leaves a duplicate, not a loss.
        message_id = self.admin.stream_add(protocol.stream_key(self.channel), fields)
        self.admin.stream_delete(self.key, [entry.id])
        return message_id

    # -- purging ---------------------------------------------------------------------
    def purge(self, ids: Iterable[str]) -> int:
        """Delete the dead letters ``ids``; how many there were.

        Raises:
            ValueError: an id is not a stream id (``<ms>-<seq>``).
        """
        return self.admin.stream_delete(self.key, [_checked(i) for i in dict.fromkeys(ids)])

    def purge_all(self) -> int:
        """Delete every dead letter (the stream itself); how many there were."""
        return self.admin.stream_remove(self.key)


def dead_letter_queues(redis_url: str | None = None) -> list[DeadLetters]:
    """The dead-letter streams that hold letters, by channel, then group.

    A stream's channel and group are read from its letters (a channel name may
    contain ``:``, so the stream's name alone does not tell them apart); an empty
    stream is left out.
    """
    found: list[DeadLetters] = []
    with open_admin(redis_url) as admin:
        for key in admin.stream_names(_DEAD_PREFIX):
            first = admin.stream_range(key, count=1)
            if not first:
                continue
            channel = _field(first[0].fields, "channel")
            group = _field(first[0].fields, "group")
            if protocol.dead_letter_key(channel, group) == key:
                found.append(DeadLetters(channel, group, redis_url=redis_url))
    return sorted(found, key=lambda queue: (queue.channel, queue.group))


def _field(fields: dict[str, bytes], name: str) -> str:
    return fields.get(name, b"").decode("utf-8", "replace")


def _checked(letter_id: str) -> str:
    if not isinstance(letter_id, str) or not _ID.match(letter_id):
        raise ValueError(f"not a dead-letter id (<ms>-<seq>): {letter_id!r}")
    return letter_id


def _after(entry_id: str) -> str:
    """The smallest id after ``entry_id``: where the next batch starts."""
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq) + 1}"
