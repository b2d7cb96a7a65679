"""Stream entries off the wire: Redis's stream replies, and stream ids.

Shared by the Redis transport (which parses the replies) and the memory transport
(which compares and makes ids as Redis does).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import StreamEntry

__all__ = ["entries_of", "flat_fields", "parse_id"]


def parse_id(entry_id: str) -> tuple[int, int]:
    """``"<ms>-<seq>"`` as a pair that sorts as Redis sorts ids (``"<ms>"`` means seq 0)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def flat_fields(fields: Mapping[str, bytes]) -> list[str | bytes]:
    """``{"data": b"..."}`` as the ``field value ...`` arguments of ``XADD``."""
    flat: list[str | bytes] = []
    for name, value in fields.items():
        flat += (name, value)
    return flat


def entries_of(reply: Any, deliveries: int = 1) -> list[StreamEntry]:
    """The ``[[id, [field, value, ...]], ...]`` of a stream reply (bytes) as entries.

    Entries whose fields are nil (deleted while pending) are left out.
    """
    entries = []
    for raw_id, raw_fields in reply or ():
        if raw_fields is None:
            continue
        if len(raw_fields) == 2:  # one field: a durable message's "data"
            fields = {raw_fields[0].decode("utf-8", "replace"): raw_fields[1]}
        else:
            pairs = iter(raw_fields)  # a field without a value (never sent) is left out
            fields = {
                name.decode("utf-8", "replace"): value
                for name, value in zip(pairs, pairs, strict=False)
            }
        entries.append(StreamEntry(raw_id.decode(), fields, deliveries))
    return entries
