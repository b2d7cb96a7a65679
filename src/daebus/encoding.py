"""The one JSON encoder of the framework: every message, reply and broadcast goes through it.

It carries what users send (dicts, lists, strings, numbers, booleans, None, datetimes,
dates, times, timedeltas, decimals, UUIDs, sets, bytes, enums, dataclasses and objects
with ``to_dict()``) and fails with :class:`~daebus.SerializationError` on anything else,
instead of silently sending ``str(obj)``.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from .exceptions import SerializationError

__all__ = ["DaebusJSONEncoder", "dumps", "loads", "make_json_serializable"]

_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def _default(obj: Any) -> Any:
    """Convert what orjson does not know natively into something it does."""
    if isinstance(obj, datetime.timedelta):
        # str() matches daebus 0.0.31 ("1 day, 2:30:00").
        return str(obj)
    if isinstance(obj, decimal.Decimal):
        return float(obj)
    if isinstance(obj, set | frozenset):
        return list(obj)
    if isinstance(obj, bytes | bytearray | memoryview):
        raw = bytes(obj)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.hex()
    if isinstance(obj, enum.Enum):
        return obj.value
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    model_dump = getattr(obj, "model_dump", None)  # pydantic v2 models
    if callable(model_dump):
        return model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(
        f"Object of type {type(obj).__name__} is not JSON serializable; "
        "send dicts, lists, strings, numbers, datetimes or bytes, "
        "or give the class a to_dict() method"
    )


def dumps(obj: Any) -> bytes:
    """Encode ``obj`` to compact UTF-8 JSON.

    Raises:
        SerializationError: the value (or something inside it) cannot be encoded.
    """
    try:
        return orjson.dumps(obj, default=_default, option=_OPTIONS)
    except orjson.JSONEncodeError as exc:
        if "Integer exceeds 64-bit range" not in str(exc):
            raise SerializationError(str(exc)) from exc
    # Python ints are unbounded but orjson's are not; the stdlib handles the rare big one.
    try:
        return json.dumps(obj, cls=DaebusJSONEncoder, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise SerializationError(str(exc)) from exc


#: Decode JSON text (bytes, bytearray, memoryview or str). Raises ``ValueError``
#: (``orjson.JSONDecodeError``) on bad input. orjson's own function, not a wrapper: it
#: runs once for every message a service gets.
loads: Callable[[bytes | bytearray | memoryview | str], Any] = orjson.loads


def make_json_serializable(obj: Any) -> Any:
    """Return ``obj`` as plain JSON types (dicts, lists, strings, numbers, ...)."""
    return orjson.loads(dumps(obj))


class DaebusJSONEncoder(json.JSONEncoder):
    """A ``json.JSONEncoder`` using the framework's conversions, for ``json.dumps(cls=...)``."""

    def default(self, o: Any) -> Any:
        """Convert one value the stdlib encoder does not know."""
        if isinstance(o, datetime.datetime | datetime.date | datetime.time):
            return o.isoformat()
        if isinstance(o, uuid.UUID):
            return str(o)
        try:
            return _default(o)
        except TypeError as exc:
            raise SerializationError(str(exc)) from exc
