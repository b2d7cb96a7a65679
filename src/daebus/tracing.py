"""OpenTelemetry tracing of messages: a span for each one, and its trace context on the wire.

Tracing is off until asked for: ``app.enable_tracing()`` for a service (its runtime's
``tracing`` is then a :class:`Tracing`, else None, and each message pays one test of
it), ``DaebusCaller(..., tracing=True)`` for a caller outside any service. A caller
used inside a service that traces follows it. OpenTelemetry is imported only then
(``pip install 'daebus[tracing]'``): daebus runs without it.

What gets a span (see docs/observability.md):

- a call (``send_request``, ``stream``, blocking or async): CLIENT;
- a request handled, durable or not: SERVER; a broadcast handled by its listeners,
  a durable message by its listener: CONSUMER;
- a broadcast or durable message sent: PRODUCER;
- an HTTP request to a route, a WebSocket message to its handler: SERVER.

The context travels as W3C Trace Context (``traceparent``, ``tracestate``): extra
top-level keys of a request envelope, which daebus 0.0.31 keeps in ``request.raw``
and otherwise ignores, and extra fields of a durable stream entry. A plain broadcast
carries none: its bytes are exactly what its listeners receive. A context that is
missing or malformed starts a new trace; it is never an error.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from . import protocol
from .exceptions import SetupError

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, SpanKind, TracerProvider

    from .pubsub import PubSubRequest
    from .transport import Delivery, StreamEntry

__all__ = ["MESSAGING_SYSTEM", "Active", "Call", "Tracing", "following", "in_use"]

#: ``messaging.system`` of every span of a message.
MESSAGING_SYSTEM = "redis"

#: The longest ``tracestate`` taken from a message (W3C allows 32 members of at most
#: 256 characters; real ones are far shorter): a bigger one is dropped, not parsed.
_LONGEST = 1024
#: The longest ``traceparent`` taken (OpenTelemetry's own bound: past it, it warns).
_LONGEST_PARENT = 512
#: One ``tracestate`` member, as W3C Trace Context defines it, and how many may be.
#: A forged ``tracestate`` is dropped here, quietly: OpenTelemetry's parser would log
#: a warning quoting it, unescaped, for every message that carries one.
_MEMBER = re.compile(
    r"(?:[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)
_MOST_MEMBERS = 32

#: True once any app or caller of this process has enabled tracing. Until then a
#: caller that follows its app (the default) does not look for the app's tracing.
in_use = False

# The span of the message being handled in this context, so that a failure found
# far from where the span started (a handler's exception, caught by the runtime) is
# recorded on it.
_serving: ContextVar[Active | None] = ContextVar("daebus_serving_span", default=None)


def following() -> Tracing | None:
    """The tracing of the app whose handler, job, hook or thread runs here, if it traces.

    Only the current context is asked, never "the app running in this process": a
    caller in a thread of the program's own traces only when asked to.
    """
    if not in_use:
        return None
    from .context import current_context  # it imports the app's machinery

    ctx = current_context()
    return ctx.app.tracing if ctx is not None else None


class Active:
    """A span current in this context (a handler's), until :meth:`close`.

    Opened and closed in one context: the task, or the worker thread's copied context,
    that handles the message.
    """

    __slots__ = ("_failed", "_serving_token", "_token", "_tracing", "span")

    def __init__(self, tracing: Tracing, span: Span) -> None:
        self._tracing = tracing
        self.span = span
        self._failed = False
        self._token = tracing._attach(tracing._with_span(span))
        self._serving_token = _serving.set(self)

    def failed(self, exc: BaseException) -> None:
        """Mark the span failed by ``exc``."""
        self._failed = True
        self._tracing.failed_span(self.span, exc)

    def http_status(self, status: int) -> None:
        """The HTTP status answered; a server error (5xx) marks the span failed."""
        self.span.set_attribute("http.response.status_code", status)
        if status >= 500 and not self._failed:  # else the failure said more
            self.span.set_status(self._tracing._status(self._tracing._error))

    def close(self) -> None:
        """End the span and make the context current before it again."""
        with contextlib.suppress(ValueError):  # reset from another context: a bug of ours
            _serving.reset(self._serving_token)
        self._tracing._detach(self._token)
        self.span.end()


class Call:
    """The span of one call or one message sent, and the context to send with it.

    Not made current: a call's replies may be read in a generator, across yields. As a
    context manager, it ends the span on exit, failed if the block raised (but not when
    a generator around it is closed early).
    """

    __slots__ = ("_tracing", "headers", "span")

    def __init__(self, tracing: Tracing, span: Span, headers: dict[str, str]) -> None:
        self._tracing = tracing
        self.span = span
        #: ``traceparent`` (and ``tracestate``) naming the span, for the envelope.
        self.headers = headers

    def failed(self, exc: BaseException) -> None:
        """Mark the span failed by ``exc`` (a generator closed early is no failure)."""
        if not isinstance(exc, GeneratorExit):
            self._tracing.failed_span(self.span, exc)

    def error_reply(self, message: str) -> None:
        """The call was answered with an error reply saying ``message``."""
        self.span.set_status(self._tracing._status(self._tracing._error, message))

    def end(self) -> None:
        """End the span."""
        self.span.end()

    def __enter__(self) -> Call:
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, traceback: Any) -> None:
        if exc is not None:
            self.failed(exc)
        self.span.end()


class Tracing:
    """Makes the spans of one app (or caller) with one tracer, and carries their context.

    Args:
        tracer_provider: the OpenTelemetry ``TracerProvider`` to use; by default the
            global one (``opentelemetry.trace.set_tracer_provider``).

    Raises:
        SetupError: OpenTelemetry is not installed.
    """

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        try:
            from opentelemetry import context as otel_context, trace
            from opentelemetry.trace import SpanKind, Status, StatusCode
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError as exc:
            raise SetupError("tracing needs OpenTelemetry: pip install 'daebus[tracing]'") from exc
        from . import __version__

        global in_use
        self.tracer = trace.get_tracer("daebus", __version__, tracer_provider=tracer_provider)
        # The W3C format itself, not the global propagator: the envelope's keys are
        # part of the wire protocol, whatever else the process propagates.
        self._propagator = TraceContextTextMapPropagator()
        self._attach = otel_context.attach
        self._detach = otel_context.detach
        self._with_span = trace.set_span_in_context
        # The parent of a message that names none: no parent, whatever is current
        # where it is handled.
        self._nothing: Context = otel_context.Context()
        self._kinds = SpanKind
        self._status = Status
        self._error = StatusCode.ERROR
        in_use = True

    def __repr__(self) -> str:
        return f"<Tracing {self.tracer!r}>"

    # -- the context on the wire -----------------------------------------------------
    def parent(self, fields: Mapping[Any, Any] | None) -> Context:
        """The context named by a message's ``traceparent``/``tracestate``, else none.

        ``fields`` is a decoded envelope, a stream entry's fields (bytes) or HTTP
        headers. Anything malformed is ignored: the span starts a new trace.
        """
        if not fields:
            return self._nothing
        carrier: dict[str, str] = {}
        for key in protocol.TRACE_KEYS:
            value = fields.get(key)
            if isinstance(value, bytes):
                value = value.decode("ascii", "replace")
            if type(value) is str and len(value) <= _LONGEST:
                carrier[key] = value
        parent = carrier.get("traceparent")
        if parent is None or len(parent) > _LONGEST_PARENT:
            return self._nothing
        state = carrier.get("tracestate")
        if state is not None and not _valid_state(state):
            del carrier["tracestate"]
        return self._propagator.extract(carrier, context=self._nothing)

    def _headers(self, span: Span) -> dict[str, str]:
        headers: dict[str, str] = {}
        self._propagator.inject(headers, context=self._with_span(span))
        return headers

    # -- failures ----------------------------------------------------------------------
    def failed_span(self, span: Span, exc: BaseException) -> None:
        """Record ``exc`` on ``span`` and set its status to error.

        An exception whose ``__str__`` fails is described by its type: recording a
        failure must not cost the caller its error reply.
        """
        try:
            described = f"{type(exc).__name__}: {exc}"
            span.record_exception(exc)
        except Exception:
            described = type(exc).__name__
        span.set_status(self._status(self._error, described))

    @staticmethod
    def failed(exc: BaseException) -> None:
        """Record ``exc`` on the span of the message handled in this context, if any."""
        active = _serving.get()
        if active is not None:
            active.failed(exc)

    # -- spans of messages handled ---------------------------------------------------
    def _serve(self, name: str, kind: SpanKind, fields: Any, attributes: dict[str, Any]) -> Active:
        span = self.tracer.start_span(
            name, context=self.parent(fields), kind=kind, attributes=attributes
        )
        return Active(self, span)

    def request(self, service: str, action: str, request: PubSubRequest) -> Active:
        """A request's SERVER span, current until closed; a durable one's too."""
        attributes: dict[str, Any] = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.destination.name": service,
            "messaging.operation.type": "process",
            "daebus.action": action,
        }
        if type(request.request_id) is str:
            attributes["messaging.message.conversation_id"] = request.request_id
        if request.message_id is not None:
            attributes["daebus.durable"] = True
            attributes["messaging.message.id"] = request.message_id
            attributes["daebus.delivery_count"] = request.delivery_count
        raw = request.raw
        return self._serve(
            f"process {service}.{action}",
            self._kinds.SERVER,
            raw if isinstance(raw, dict) else None,
            attributes,
        )

    def broadcast(self, delivery: Delivery) -> Active:
        """A broadcast's CONSUMER span, for one listener called: a new trace, always.

        Named after the listener's channel or pattern (never the channel a pattern
        matched: those may be as many as the ids in them).
        """
        key = delivery.pattern if delivery.pattern is not None else delivery.channel
        attributes: dict[str, Any] = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.destination.name": delivery.channel,
            "messaging.operation.type": "process",
        }
        if delivery.pattern is not None:
            attributes["messaging.destination.template"] = delivery.pattern
        return self._serve(f"process {key}", self._kinds.CONSUMER, None, attributes)

    def durable_message(self, channel: str, group: str, entry: StreamEntry) -> Active:
        """A durable message's CONSUMER span, in the trace of the span that sent it."""
        attributes: dict[str, Any] = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.destination.name": channel,
            "messaging.operation.type": "process",
            "messaging.consumer.group.name": group,
            "messaging.message.id": entry.id,
            "daebus.durable": True,
            "daebus.delivery_count": entry.deliveries,
        }
        return self._serve(f"process {channel}", self._kinds.CONSUMER, entry.fields, attributes)

    def http(self, method: str, route: str, path: str, headers: Any) -> Active:
        """An HTTP request's SERVER span, in the trace its ``traceparent`` header names."""
        attributes = {"http.request.method": method, "http.route": route, "url.path": path}
        return self._serve(f"{method} {route}", self._kinds.SERVER, headers, attributes)

    def websocket(self, message_type: str, client_id: str) -> Active:
        """A WebSocket message's SERVER span (a frame carries no context: a new trace)."""
        attributes = {"daebus.websocket.message_type": message_type, "daebus.client_id": client_id}
        return self._serve(f"websocket {message_type}", self._kinds.SERVER, None, attributes)

    # -- spans of messages sent ------------------------------------------------------
    def call(
        self, service: str, action: str, durable: bool = False, *, answered: bool = True
    ) -> Call:
        """A call's CLIENT span, child of the current span; its headers go in the envelope.

        A request that wants no answer (``answered=False``) gets a PRODUCER span.
        """
        attributes: dict[str, Any] = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.destination.name": service,
            "messaging.operation.type": "send",
            "daebus.action": action,
        }
        if durable:
            attributes["daebus.durable"] = True
        span = self.tracer.start_span(
            f"send {service}.{action}",
            kind=self._kinds.CLIENT if answered else self._kinds.PRODUCER,
            attributes=attributes,
        )
        return Call(self, span, self._headers(span))

    def publish(self, channel: str, durable: bool, count: int = 1) -> Call:
        """A PRODUCER span for a broadcast (``count`` of them: a batch) sent on ``channel``.

        Its headers go in a durable message's stream entry; a plain broadcast has
        nowhere to carry them.
        """
        attributes: dict[str, Any] = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.destination.name": channel,
            "messaging.operation.type": "send",
        }
        if durable:
            attributes["daebus.durable"] = True
        if count != 1:
            attributes["messaging.batch.message_count"] = count
        span = self.tracer.start_span(
            f"publish {channel}", kind=self._kinds.PRODUCER, attributes=attributes
        )
        return Call(self, span, self._headers(span) if durable else {})


def _valid_state(state: str) -> bool:
    """Whether ``state`` is a well-formed W3C ``tracestate`` (empty members allowed)."""
    members = [member.strip(" \t") for member in state.split(",")]
    members = [member for member in members if member]
    return len(members) <= _MOST_MEMBERS and all(_MEMBER.fullmatch(m) for m in members)
