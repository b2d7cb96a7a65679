"""daebus: background services that talk to each other over Redis, with a Flask-like API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._logging import direct_logger
from .app import Daebus
from .blueprint import Blueprint
from .caller import AsyncDaebusCaller, DaebusCaller
from .context import broadcast, cache, get_daemon, logger, request, response
from .dead_letters import DeadLetter, DeadLetters, dead_letter_queues
from .encoding import DaebusJSONEncoder
from .exceptions import (
    CallError,
    CallTimeoutError,
    ConnectionLostError,
    ContextError,
    DaebusError,
    MessageTooLargeError,
    RemoteError,
    ReplicationError,
    SerializationError,
    ServiceBusyError,
    ServiceUnavailableError,
    SetupError,
    TransportError,
)
from .health import health_stats, ping, subscriber_counts
from .pubsub import PubSubBroadcast, PubSubRequest, PubSubResponse
from .registry import service_health, service_info, services

if TYPE_CHECKING:
    from .http import DaebusHttp, HttpRequest, HttpResponse
    from .websocket import DaebusWebSocket, WebSocketRequest, WebSocketResponse

__version__ = "0.1.0"

# HTTP and WebSocket load aiohttp, which is slow to import: only when first asked for,
# so that services and the command line that do not use them start fast.
_LAZY = {
    "DaebusHttp": ".http",
    "HttpRequest": ".http",
    "HttpResponse": ".http",
    "DaebusWebSocket": ".websocket",
    "WebSocketRequest": ".websocket",
    "WebSocketResponse": ".websocket",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'daebus' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AsyncDaebusCaller",
    "Blueprint",
    "CallError",
    "CallTimeoutError",
    "ConnectionLostError",
    "ContextError",
    "Daebus",
    "DaebusCaller",
    "DaebusError",
    "DaebusHttp",
    "DaebusJSONEncoder",
    "DaebusWebSocket",
    "DeadLetter",
    "DeadLetters",
    "HttpRequest",
    "HttpResponse",
    "MessageTooLargeError",
    "PubSubBroadcast",
    "PubSubRequest",
    "PubSubResponse",
    "RemoteError",
    "ReplicationError",
    "SerializationError",
    "ServiceBusyError",
    "ServiceUnavailableError",
    "SetupError",
    "TransportError",
    "WebSocketRequest",
    "WebSocketResponse",
    "__version__",
    "broadcast",
    "cache",
    "dead_letter_queues",
    "direct_logger",
    "get_daemon",
    "health_stats",
    "logger",
    "ping",
    "request",
    "response",
    "service_health",
    "service_info",
    "services",
    "subscriber_counts",
]
