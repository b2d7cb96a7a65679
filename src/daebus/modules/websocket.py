"""0.0.31's ``daebus.modules.websocket``."""

from ..websocket import DaebusWebSocket, WebSocketRequest, WebSocketResponse

__all__ = ["DaebusWebSocket", "WebSocketRequest", "WebSocketResponse"]
