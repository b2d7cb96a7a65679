"""A call's messages: its request encoded, its replies decoded, the errors it ends with.

Both callers build on these, so that a blocking and an async call of the same action
send the same bytes and fail with the same words.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NoReturn

from .. import protocol
from .._flow import sent_request
from ..exceptions import (
    CallTimeoutError,
    ConnectionLostError,
    MessageTooLargeError,
    RemoteError,
    ServiceBusyError,
    ServiceUnavailableError,
    TransportError,
)

__all__ = [
    "connection_lost",
    "decode_reply",
    "durable_entry",
    "durable_timed_out",
    "encode_request",
    "fail_with",
    "log_reply",
    "server_silent",
    "timed_out",
    "unavailable",
]

flow = logging.getLogger("daebus.flow")


def encode_request(
    service: str,
    action: str,
    payload: Any,
    reply_to: str | None,
    request_id: str,
    max_size: int | None = None,
    trace: dict[str, str] | None = None,
) -> bytes:
    """A request envelope for ``service``; MessageTooLargeError past ``max_size`` bytes.

    ``trace``: the call's trace context, sent along (see :mod:`daebus.tracing`).
    """
    data = protocol.encode_request(action, payload, reply_to, request_id, service, trace)
    if max_size is not None and len(data) > max_size:
        raise MessageTooLargeError(
            f"request of {len(data)} bytes is over the {max_size}-byte limit"
        )
    if flow.isEnabledFor(logging.DEBUG):
        sent_request(service, action, request_id, reply_to, data)
    return data


def decode_reply(logger: logging.Logger, channel: str, data: bytes) -> protocol.Reply | None:
    """The reply in ``data``, or None (logged) if it is malformed."""
    try:
        return protocol.decode_reply(data)
    except protocol.BadMessageError as exc:
        logger.warning("ignored a malformed reply on %s: %s", channel, exc)
        return None


def log_reply(service: str, reply: protocol.Reply) -> None:
    """Trace a reply on ``daebus.flow`` (debug)."""
    if flow.isEnabledFor(logging.DEBUG):
        flow.debug(
            "<- %s %s request_id=%s final=%s",
            protocol.shorten(service),
            protocol.shorten(reply.status),
            protocol.shorten(reply.request_id),
            reply.final,
        )


def unavailable(service: str, action: str) -> ServiceUnavailableError:
    """The request reached no one."""
    return ServiceUnavailableError(
        f"Request to {service}.{action} reached no one: no service is "
        f"subscribed to the channel {protocol.service_channel(service)!r}"
    )


def timed_out(service: str, action: str, timeout: float) -> CallTimeoutError:
    """No reply (or next part) in time."""
    return CallTimeoutError(f"Request to {service}.{action} timed out after {timeout}s")


def durable_timed_out(service: str, action: str, timeout: float) -> CallTimeoutError:
    """No reply in time to a request left on the service's request stream."""
    return CallTimeoutError(
        f"Durable request to {service}.{action} timed out after {timeout}s: no instance "
        f"of {service!r} answered it in time (one that reads it after its deadline drops "
        "it unrun; services on daebus 0.0.31 do not read durable requests)"
    )


def durable_entry(data: bytes, ttl: float) -> dict[str, bytes]:
    """A durable request's stream entry: the request, and when its caller stops waiting.

    The deadline is read on the clock of the instance that takes the request: clocks
    apart by more than a request's ``ttl`` make it run late, or not at all.
    """
    deadline_ms = int((time.time() + ttl) * 1000)
    return {
        protocol.STREAM_DATA_FIELD: data,
        protocol.STREAM_DEADLINE_FIELD: str(deadline_ms).encode(),
    }


def server_silent(service: str, action: str, timeout: float, where: str) -> TransportError:
    """The server did not take the request in time."""
    return TransportError(
        f"Request to {service}.{action} was not sent: no answer from {where} within {timeout}s"
    )


def connection_lost(service: str, action: str, error: BaseException) -> ConnectionLostError:
    """The connection dropped while the call waited: the reply can no longer come."""
    return ConnectionLostError(
        f"Request to {service}.{action}: the connection was lost while waiting for the "
        f"reply (the request may have run): {error}"
    )


def fail_with(service: str, action: str, reply: protocol.Reply) -> NoReturn:
    """Raise what an error reply means: ServiceBusyError if refused unrun, else RemoteError."""
    busy = reply.error_code == protocol.CODE_BUSY  # refused unrun: full, or stopping
    raise (ServiceBusyError if busy else RemoteError)(
        reply.error_message,
        service=service,
        action=action,
        request_id=reply.request_id,
        payload=reply.payload,
    )
