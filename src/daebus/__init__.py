"""daebus: background services that talk to each other over Redis, with a Flask-like API."""

from __future__ import annotations

from ._logging import direct_logger
from .app import Daebus
from .blueprint import Blueprint
from .caller import AsyncDaebusCaller, DaebusCaller
from .context import broadcast, cache, get_daemon, logger, request, response
from .encoding import DaebusJSONEncoder
from .exceptions import (
    CallError,
    CallTimeoutError,
    ContextError,
    DaebusError,
    MessageTooLargeError,
    RemoteError,
    SerializationError,
    ServiceUnavailableError,
    SetupError,
    TransportError,
)
from .pubsub import PubSubBroadcast, PubSubRequest, PubSubResponse

__version__ = "0.1.0"

__all__ = [
    "AsyncDaebusCaller",
    "Blueprint",
    "CallError",
    "CallTimeoutError",
    "ContextError",
    "Daebus",
    "DaebusCaller",
    "DaebusError",
    "DaebusJSONEncoder",
    "MessageTooLargeError",
    "PubSubBroadcast",
    "PubSubRequest",
    "PubSubResponse",
    "RemoteError",
    "SerializationError",
    "ServiceUnavailableError",
    "SetupError",
    "TransportError",
    "__version__",
    "broadcast",
    "cache",
    "direct_logger",
    "get_daemon",
    "logger",
    "request",
    "response",
]
