"""Watching the bus from outside: every message, on a subscription of the dashboard's own.

The observer subscribes to the pattern ``*`` on the dashboard's transport (its own
connection to the server, re-made if lost, as services' are), counts each message on
its channel (:class:`~daebus.dashboard._traffic.TrafficTable`) and times requests to
their replies (:class:`~daebus.dashboard._latency.LatencyTable`). It runs no code of
the services it watches and adds nothing to their hot path: the server copies each
message to one more subscriber.

Whatever arrives is data, never trusted: bytes that are not JSON, JSON that is not an
envelope, and messages past :data:`MAX_DECODED` bytes are counted and not looked into.

A pattern subscriber receives every message, so while the observer is subscribed no
``PUBLISH`` on the server finds nobody: a caller of a service with no instance waits
for its timeout instead of learning at once that nobody listens. That is why the
dashboard subscribes only while a page watches (see :mod:`._snapshot`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from .. import encoding
from ..transport import Delivery, Subscription, Transport
from ._latency import LatencyTable
from ._traffic import TrafficTable

__all__ = ["MAX_DECODED", "BusObserver"]

logger = logging.getLogger(__name__)

#: Messages larger than this are counted but not decoded to match requests and replies.
MAX_DECODED = 1024 * 1024


class BusObserver:
    """Counts the messages of every channel and times requests, on one subscription.

    :meth:`observe` is the whole of the work per message, and can be fed directly (the
    tests do); :meth:`start` subscribes it to ``*`` on a transport.
    """

    def __init__(self) -> None:
        self.traffic = TrafficTable()
        self.latency = LatencyTable()
        #: Messages too large to look into, and messages that were not JSON.
        self.undecoded = 0
        self.not_json = 0
        self._transport: Transport | None = None
        self._subscription: Subscription | None = None
        self._lock = asyncio.Lock()

    @property
    def watching(self) -> bool:
        """Whether the observer is subscribed (see :meth:`start`)."""
        return self._subscription is not None

    @property
    def receiving(self) -> bool:
        """Whether messages reach the observer now (False while its connection is re-made)."""
        transport = self._transport
        return transport is not None and self._subscription is not None and transport.receiving

    async def start(self, transport: Transport) -> None:
        """Subscribe to every channel on ``transport`` (idempotent). Raises ``TransportError``."""
        # Held across the subscription: two starts at once (a page arriving as the feed
        # ticks) would subscribe twice, and count every message twice.
        async with self._lock:
            if self._subscription is not None:
                return
            self._subscription = await transport.subscribe("*", self._on_delivery, pattern=True)
            self._transport = transport

    async def stop(self) -> None:
        """Unsubscribe (idempotent); what was counted stays."""
        async with self._lock:
            subscription, self._subscription = self._subscription, None
            self._transport = None
            if subscription is not None:
                await subscription.unsubscribe()

    def _on_delivery(self, delivery: Delivery) -> None:
        try:
            self.observe(delivery.channel, delivery.data, time.monotonic())
        except Exception:  # a bug here must not stop the transport's reader
            logger.exception("the dashboard could not count a message on %r", delivery.channel)

    def observe(self, channel: str, data: bytes, now: float) -> None:
        """Count one message of ``channel``; match it if it is a request or a reply."""
        self.traffic.count(channel, len(data), now)
        if not data.startswith(b"{") or channel.startswith("daebus:"):
            return  # not a JSON object (no envelope is anything else), or daebus's own
        if len(data) > MAX_DECODED:
            self.undecoded += 1
            return
        try:
            message: Any = encoding.loads(data)
        except ValueError:
            self.not_json += 1
            return
        if not isinstance(message, dict):
            return
        if "action" in message and "request_id" in message and "reply_to" in message:
            self.latency.request(channel, message, now)
        elif "status" in message and "request_id" in message:
            self.latency.reply(channel, message, now)

    def tick(self, now: float | None = None) -> None:
        """Take the rates since the last tick, and forget what has waited too long."""
        now = time.monotonic() if now is None else now
        self.traffic.tick(now)
        self.latency.tick(now)

    def figures(self, services: frozenset[str] = frozenset()) -> dict[str, Any]:
        """The traffic and latency tables, as the snapshot shows them."""
        now = time.monotonic()
        channels = self.traffic.rows(services)
        for row in channels:
            row["idle"] = round(max(0.0, now - row.pop("last")), 1)
        return {
            "watching": self.watching,
            "receiving": self.receiving,
            "rate": round(self.traffic.rate, 2),
            "messages": self.traffic.messages,
            "channels": channels,
            "actions": self.latency.rows(),
            "pending": self.latency.pending,
            "dropped": self.latency.dropped,
            "undecoded": self.undecoded,
            "not_json": self.not_json,
        }
