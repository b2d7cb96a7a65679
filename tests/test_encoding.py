"""The one encoder: what it carries, and the clear error on what it cannot."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import uuid

import pytest

from daebus import DaebusJSONEncoder, SerializationError
from daebus.encoding import dumps, loads, make_json_serializable


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int


class WithToDict:
    def to_dict(self) -> dict[str, int]:
        return {"z": 3}


def test_carries_what_users_send() -> None:
    value = {
        "text": "é",
        "n": 1,
        "f": 1.5,
        "none": None,
        "list": [1, "a"],
        "tuple": (1, 2),
        "dt": datetime.datetime(2023, 12, 25, 15, 30, 45, 123456),
        "date": datetime.date(2023, 12, 25),
        "time": datetime.time(15, 30, 45),
        "delta": datetime.timedelta(days=1, hours=2, minutes=30),
        "dec": decimal.Decimal("19.99"),
        "set": {1},
        "utf8": b"abc",
        "binary": b"\x00\x01\x02\xff",
        "uuid": uuid.UUID(int=0),
        "enum": Colour.RED,
        "dataclass": Point(1, 2),
        "to_dict": WithToDict(),
        1: "int key",
        "big": 2**70,
    }
    assert loads(dumps(value)) == {
        "text": "é",
        "n": 1,
        "f": 1.5,
        "none": None,
        "list": [1, "a"],
        "tuple": [1, 2],
        "dt": "2023-12-25T15:30:45.123456",
        "date": "2023-12-25",
        "time": "15:30:45",
        "delta": "1 day, 2:30:00",
        "dec": 19.99,
        "set": [1],
        "utf8": "abc",
        "binary": "000102ff",
        "uuid": "00000000-0000-0000-0000-000000000000",
        "enum": "red",
        "dataclass": {"x": 1, "y": 2},
        "to_dict": {"z": 3},
        "1": "int key",
        "big": 2**70,
    }


@pytest.mark.parametrize("value", [object(), {"nested": [object()]}, lambda: 1])
def test_fails_clearly_on_what_it_cannot_carry(value: object) -> None:
    with pytest.raises(SerializationError, match="is not JSON serializable"):
        dumps(value)


def test_stdlib_encoder_class_and_make_json_serializable() -> None:
    when = datetime.datetime(2024, 1, 1)
    assert json.dumps({"when": when}, cls=DaebusJSONEncoder) == '{"when": "2024-01-01T00:00:00"}'
    assert make_json_serializable({"s": {2}}) == {"s": [2]}
    with pytest.raises(SerializationError):
        json.dumps(object(), cls=DaebusJSONEncoder)
