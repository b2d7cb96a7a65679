"""The ``daebus.flow`` debug lines: one brief line per message in or out.

``debug=True`` (DEBUG on the ``daebus`` logger) turns them on. Received: ``->`` a
request or a broadcast, ``<-`` a reply. Sent: ``=>`` a request or a broadcast, ``<=``
a reply. Fields that came off the wire are shortened and escaped (:func:`preview`).

Each function logs only if ``flow`` is enabled for DEBUG; where every message pays for
the call, ask ``flow.isEnabledFor(logging.DEBUG)`` first.
"""

from __future__ import annotations

import logging
from typing import Any

from . import protocol

__all__ = ["flow", "preview", "published", "sent_reply", "sent_request"]

flow = logging.getLogger("daebus.flow")


def preview(data: bytes) -> str:
    """The start of a message, for a log line (escaped: it may be anything)."""
    text = protocol.shorten(data[: protocol.FIELD_LIMIT].decode("utf-8", "replace"))
    return text + (f"... ({len(data)} bytes)" if len(data) > protocol.FIELD_LIMIT else "")


def sent_request(service: str, action: Any, request_id: Any, reply_to: Any, data: bytes) -> None:
    """A request sent to ``service``."""
    if flow.isEnabledFor(logging.DEBUG):
        flow.debug(
            "=> %s %s request_id=%s reply_to=%s payload=%s",
            protocol.shorten(service),
            protocol.shorten(action),
            protocol.shorten(request_id),
            protocol.shorten(reply_to),
            preview(data),
        )


def sent_reply(channel: Any, status: str, request_id: Any, final: bool, data: bytes) -> None:
    """A reply sent to ``channel`` (None: nowhere, the request named no reply channel)."""
    if flow.isEnabledFor(logging.DEBUG):
        flow.debug(
            "<= %s %s request_id=%s final=%s payload=%s",
            protocol.shorten(channel) if channel is not None else "(nowhere)",
            status,
            protocol.shorten(request_id),
            final,
            preview(data),
        )


def published(channel: str, data: bytes, durable: bool) -> None:
    """A broadcast published on ``channel``, or a durable message added to its stream."""
    if flow.isEnabledFor(logging.DEBUG):
        flow.debug(
            "=> %s (%s) %s",
            protocol.shorten(channel),
            "durable" if durable else "broadcast",
            preview(data),
        )
