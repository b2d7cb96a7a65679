# Unit tests of inventory.py, as its author would write them: daebus's pytest plugin gives
# the `daebus_client` fixture, which runs the app on a private in-memory broker.
#
#     pytest examples/testing
import pytest

from daebus import RemoteError
from daebus.testing import run_app

from inventory import app


@pytest.fixture
def inventory(daebus_client):
    # A fresh, empty inventory for every test: each test gets its own broker and cache.
    return daebus_client(app, service="inventory")


def test_add_returns_the_new_stock(inventory):
    assert inventory.call("add", {"item": "tea", "quantity": 3}) == {"item": "tea", "stock": 3}
    assert inventory.call("add", {"item": "tea"}) == {"item": "tea", "stock": 4}
    assert inventory.call("stock") == {"tea": 4}


def test_add_needs_an_item(inventory):
    with pytest.raises(RemoteError, match="item is required"):
        inventory.call("add", {"quantity": 3})


def test_export_streams_one_part_per_item(inventory):
    inventory.call("add", {"item": "tea", "quantity": 2})
    inventory.call("add", {"item": "cake", "quantity": 1})

    assert inventory.stream("export") == [
        {"item": "cake", "stock": 1},
        {"item": "tea", "stock": 2},
        {"items": 2},
    ]


def test_an_order_lowers_the_stock_and_warns_when_low(inventory):
    inventory.call("add", {"item": "tea", "quantity": 3})

    # publish() returns once the app's listener has handled the message.
    inventory.publish("orders:web", {"item": "tea", "quantity": 2})

    assert inventory.call("stock") == {"tea": 1}
    assert inventory.broadcasts.channels == [
        "inventory:changed",
        "inventory:changed",
        "inventory:low",
    ]
    assert inventory.broadcasts[-1].payload == {"item": "tea", "stock": 1, "shop": "orders:web"}


def test_capture_watches_one_pattern(inventory):
    with inventory.capture("inventory:low") as warnings:
        inventory.call("add", {"item": "tea", "quantity": 5})
        inventory.publish("orders:shop", {"item": "tea", "quantity": 1})
        assert len(warnings) == 0
        inventory.publish("orders:shop", {"item": "tea", "quantity": 3})
    assert warnings.payloads == [{"item": "tea", "stock": 1, "shop": "orders:shop"}]


def test_without_pytest_fixtures():
    # run_app does the same as the fixture, anywhere (unittest, a script, a notebook).
    with run_app(app, service="inventory") as inventory:
        assert inventory.call("add", {"item": "jam"}) == {"item": "jam", "stock": 1}
        assert inventory.cache.hget("stock", "jam") == "1"
