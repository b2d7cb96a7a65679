"""The exceptions daebus raises, under one root.

::

    DaebusError
    ├── SetupError (ValueError)            misuse at registration or configuration time
    ├── ContextError (RuntimeError)        a proxy used outside of a handler or app context
    ├── SerializationError (ValueError)    a value cannot be encoded to JSON
    │   └── MessageTooLargeError           an encoded message is over the size limit
    ├── TransportError                     the message broker failed
    │   ├── ConnectionLostError            ... while a call waited for its reply
    │   └── ReplicationError               fewer replicas than asked copied a durable write
    └── CallError                          raised to a caller
        ├── RemoteError                    the service answered with an error reply
        │   └── ServiceBusyError           ... refusing the request unrun: full, or stopping
        └── CallTimeoutError (TimeoutError)
            └── ServiceUnavailableError    nobody is subscribed to the service's channel
"""

from __future__ import annotations

from typing import Any


class DaebusError(Exception):
    """Root of every error raised by daebus."""


class SetupError(DaebusError, ValueError):
    """A handler, blueprint or option was registered or configured wrongly."""


class ContextError(DaebusError, RuntimeError):
    """A context proxy (``request``, ``response``, ...) was used outside of its context."""


class SerializationError(DaebusError, ValueError):
    """A value cannot be encoded to JSON for the wire."""


class MessageTooLargeError(SerializationError):
    """An encoded message is larger than the configured limit."""


class TransportError(DaebusError):
    """The message broker could not be reached or failed a command."""


class ConnectionLostError(TransportError):
    """The connection to the broker dropped while a call waited for its reply.

    The request may or may not have run: the reply, if any, was lost with the
    connection. Raised at once, not at the call's timeout.
    """


class ReplicationError(TransportError):
    """Fewer replicas than asked for acknowledged a durable write within its time.

    The write is on the master (a retry may write it twice), but it is lost if the
    master fails before a replica copies it. ``acknowledged`` and ``wanted`` are the
    counts of replicas.
    """

    def __init__(self, message: str, *, acknowledged: int, wanted: int) -> None:
        super().__init__(message)
        self.acknowledged = acknowledged
        self.wanted = wanted


class CallError(DaebusError):
    """Base of the errors raised to a caller."""


class RemoteError(CallError):
    """The service answered with an error reply.

    ``str(error)`` is the message the service sent, as ``Exception(message)`` was in
    daebus 0.0.31, so existing ``except Exception as e: str(e)`` code keeps working.
    """

    def __init__(
        self,
        message: str,
        *,
        service: str | None = None,
        action: str | None = None,
        request_id: str | None = None,
        payload: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.service = service
        self.action = action
        self.request_id = request_id
        self.payload = payload

    def __repr__(self) -> str:
        return (
            f"RemoteError({self.message!r}, service={self.service!r}, "
            f"action={self.action!r}, request_id={self.request_id!r})"
        )


class ServiceBusyError(RemoteError):
    """The service refused the request without running it: it is full, or stopping.

    Nothing ran, so the request is safe to send again later (or to another instance).
    """


class CallTimeoutError(CallError, TimeoutError):
    """No reply (or no further part of a streamed reply) arrived in time."""


class ServiceUnavailableError(CallTimeoutError):
    """Nobody is subscribed to the service's channel, so the request reached no one.

    It subclasses :class:`CallTimeoutError` (and so ``TimeoutError``) because 0.0.31
    reported this case as a timeout; code catching ``TimeoutError`` keeps working, but
    now learns it at once instead of after the whole timeout.
    """
