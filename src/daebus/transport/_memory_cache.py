"""The cache of ``memory://``: a fakeredis client whose ``publish`` goes through the broker.

Imported only when a memory transport's cache is first used, so that fakeredis stays an
optional dependency (``daebus[testing]``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import fakeredis

if TYPE_CHECKING:
    from .memory import MemoryTransport

__all__ = ["bridged_client"]


class _BridgedFakeRedis(fakeredis.FakeRedis):
    """fakeredis for the data; PUBLISH reaches the broker's subscribers instead.

    Only this method is bridged: ``pubsub()`` and a pipeline's ``publish`` stay inside
    fakeredis, whose subscribers are not the broker's.
    """

    _daebus_transport: MemoryTransport

    def publish(self, channel: Any, message: Any, **kwargs: Any) -> int:
        """Publish through the broker, as the transport; returns the receiver count."""
        if isinstance(channel, bytes | bytearray | memoryview):
            channel = bytes(channel).decode("utf-8", "replace")
        return self._daebus_transport.broker.publish(str(channel), message, self._daebus_transport)


def bridged_client(server: fakeredis.FakeServer, transport: MemoryTransport) -> _BridgedFakeRedis:
    """A client on ``server`` with ``decode_responses=True``, publishing as ``transport``."""
    client = _BridgedFakeRedis(server=server, decode_responses=True)
    client._daebus_transport = transport
    return client
