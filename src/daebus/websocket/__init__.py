"""WebSocket endpoints: :class:`DaebusWebSocket`, served by aiohttp on the service's loop.

::

    app = Daebus(__name__)
    app.attach(DaebusHttp(port=8080))
    app.attach(DaebusWebSocket())           # ws://<host>:8081/, any path

    @app.socket("chat_message")
    def handle_chat(data, client_id):
        app.websocket.broadcast_to_all(data, message_type="chat_update")
        return {"status": "delivered"}      # -> {"type": "response", "data": {...}}

The frames are daebus 0.0.31's: a client sends ``{"type": t, "data": d}``; the server
answers ``{"type": "response", "data": ...}`` with a handler's return value,
``{"type": "error", "data": {"error": msg}}`` when a handler raised, and
``{"type": "error", "error": msg}`` for protocol errors (bad JSON, no type, unknown
type, rate limit with ``retry_after``).

Plain ``def`` handlers run in the service's worker threads, ``async def`` ones on its
event loop. Every sending method works from any thread (see :class:`DaebusWebSocket`).
"""

from __future__ import annotations

from ._component import DEFAULT_MAX_MESSAGE_SIZE, DaebusWebSocket
from ._connection import CLOSE_TOO_SLOW, DEFAULT_MAX_QUEUE_SIZE, SocketData, WebSocketConnection
from ._dispatch import (
    CLOSE_GOING_AWAY,
    CLOSE_REJECTED,
    RESERVED_MESSAGE_TYPES,
    WebSocketRequest,
    WebSocketResponse,
)

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_REJECTED",
    "CLOSE_TOO_SLOW",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_QUEUE_SIZE",
    "RESERVED_MESSAGE_TYPES",
    "DaebusWebSocket",
    "SocketData",
    "WebSocketConnection",
    "WebSocketRequest",
    "WebSocketResponse",
]
