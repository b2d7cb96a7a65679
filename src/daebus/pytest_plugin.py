"""pytest fixtures for testing daebus services, loaded through daebus's ``pytest11`` entry point.

- ``daebus_memory_url``: a ``memory://`` URL of a private broker, dropped after the test.
- ``daebus_client``: starts apps on that broker; call it as
  ``daebus_client(app, service="name")`` to get a started :class:`daebus.testing.TestClient`.
  Every app it started is stopped after the test; apps started in one test share the
  broker, so they can call each other.

daebus itself is imported only when a fixture is used.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import pytest

if TYPE_CHECKING:
    from .app import Daebus
    from .testing import TestClient

__all__ = ["ClientFactory", "daebus_client", "daebus_memory_url"]


class ClientFactory(Protocol):
    """The ``daebus_client`` fixture: start an app, get its test client."""

    def __call__(
        self, app: Daebus, service: str | None = None, *, timeout: float = 5.0
    ) -> TestClient:
        """Start ``app`` as ``service`` (default ``app.name``) on the test's broker."""


@pytest.fixture
def daebus_memory_url() -> Iterator[str]:
    """A ``memory://`` URL of a broker private to the test."""
    from .testing import memory_url
    from .transport.memory import forget

    url = memory_url()
    yield url
    forget(url)


@pytest.fixture
def daebus_client(daebus_memory_url: str) -> Iterator[ClientFactory]:
    """Start apps on the test's private broker; all are stopped after the test."""
    from .testing import TestClient

    clients: list[TestClient] = []

    def start(app: Daebus, service: str | None = None, *, timeout: float = 5.0) -> TestClient:
        client = TestClient(app, service, url=daebus_memory_url, timeout=timeout)
        client.start()
        clients.append(client)
        return client

    yield start
    for client in reversed(clients):
        client.close()
