"""Requests: decode and check each one, run its action, and answer it.

A request is run only when it can be answered where it asks (its ``reply_to`` is a
reply channel and its ``request_id`` can be echoed); one that cannot is dropped, with a
throttled warning. One that is malformed, too large or names no known action is
answered with an error reply. A request without ``reply_to`` (a client publishing bare
JSON) is answered on ``<service>.responses``, if its ``service`` field is this
service's name or absent. A plain ``def`` action runs start to end in a worker, reply
included; anything else runs in a task on the loop. When other instances of the service
run too, a request is claimed first and runs only here if this instance wins it
(:mod:`.instances`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import context, protocol
from .._flow import preview, sent_reply
from ..exceptions import SerializationError, TransportError
from ..protocol import shorten
from ..pubsub import PubSubRequest, PubSubResponse
from .invoke import SYNC, StartedTooLateError, error_text, kind_of
from .readiness import health_action

if TYPE_CHECKING:
    from ..transport import Delivery
    from . import ServiceRuntime

__all__ = ["Requests", "preview"]

# The name the runtime has always logged under: users filter on it.
logger = logging.getLogger("daebus.runtime")
flow = logging.getLogger("daebus.flow")

#: Health probes that may run past ``max_in_flight`` at once (see Requests.admit).
HEALTH_HEADROOM = 4
_HEALTH = protocol.HEALTH_ACTION.encode()

#: Error texts (a handler's exception) are longer than fields, but still bounded.
_TEXT_LIMIT = 2000


def _is_short_id(request_id: Any) -> bool:
    """Whether a request id can be echoed: None, a short string, a number."""
    kind = type(request_id)
    if kind is str:
        return len(request_id) <= protocol.FIELD_LIMIT
    if kind is int:
        return bool(-(1 << 64) < request_id < 1 << 64)
    return request_id is None or kind is float or kind is bool


class Requests:
    """The requests of one running service: its service and workflow channels."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.app = runtime.app
        self.service = runtime.service
        self.admission = runtime.admission
        self.publisher = runtime.replier
        self.replies = runtime.replies
        self.throttle = runtime.throttle
        self.pool = runtime.executor
        self.tracing = runtime.tracing
        self.invoke = runtime.invoker.invoke
        self.call_sync = runtime.invoker.call_sync
        self.instances = runtime.instances
        self.tally = runtime.tally
        self.metrics = runtime.metrics
        # The actions the runtime answers itself, under names users cannot register.
        self._builtin = {protocol.HEALTH_ACTION: health_action(runtime)}

    def on_request(self, kind: str, delivery: Delivery) -> None:
        """Transport callback for the service (and workflow) channel.

        Starts the request, or queues it behind ``max_in_flight``; past ``max_queued``
        it is refused at once with a busy error reply. With other instances running, it
        is claimed first, and admitted so only if this instance wins it. Never returns
        an awaitable: the transport keeps reading (see :mod:`daebus.runtime`).
        """
        if self.instances.shared:
            self.instances.claim(kind, delivery, self.admit)
            return
        self.admit(kind, delivery)

    def admit(self, kind: str, delivery: Delivery) -> None:
        """Start a request this instance runs, or queue (or refuse) it behind the others."""
        slots = self.admission
        if slots.stopping or (
            (
                slots.requests
                or slots.tasks + slots.jobs_started - slots.jobs_finished >= slots.capacity
            )
            and not self._asks_health(kind, delivery)
        ):
            slots.hold(kind, delivery)
            return
        self.start(kind, delivery)

    def _asks_health(self, kind: str, delivery: Delivery) -> bool:
        """Whether a request that would wait for a slot is a health probe, answered at once.

        A busy service is not an unready one: queued behind the work, a probe would time
        out, as if no instance ran. Up to :data:`HEALTH_HEADROOM` run past the limits.
        """
        if kind != "request" or _HEALTH not in delivery.data:  # the usual case: no decoding
            return False
        slots = self.admission
        if (
            slots.tasks + slots.jobs_started - slots.jobs_finished
            >= slots.capacity + HEALTH_HEADROOM
        ):
            return False
        try:
            return protocol.decode_object(delivery.data).get("action") == protocol.HEALTH_ACTION
        except protocol.BadMessageError:
            return False

    def start(self, kind: str, delivery: Delivery) -> None:
        """Check one request on the loop, then start its handler (or refuse it).

        A plain ``def`` action goes to a worker as one job, which calls it, replies
        and frees the slot: no task, no future, no wake-up of the loop afterwards.
        Anything else gets a task on the loop.
        """
        try:
            accepted = self.accept(kind, delivery)
        except Exception:  # a bug of ours must not stop the reader
            logger.exception("could not dispatch a message on %r", shorten(delivery.channel))
            return
        if accepted is None:
            if self.metrics is not None:
                self.metrics.refused(kind, None, "refused")
            return
        name, handler, ctx = accepted
        if kind_of(handler) is SYNC:
            self.admission.jobs_started += 1
            try:
                self.pool.call(
                    contextvars.copy_context().run, self._run_sync, kind, name, handler, ctx
                )
            except RuntimeError:  # the pool is shut down: the service is stopping
                self.admission.job_done()
                logger.warning("dropped a request for %r: the service is stopping", name)
        else:
            self.admission.spawn(self._run_async(kind, name, handler, ctx))

    def accept(
        self, kind: str, delivery: Delivery
    ) -> tuple[str, Callable[..., Any], context.MessageContext] | None:
        """Decode and validate a request; refuse (or drop) it and return None if bad.

        A request is not run when it cannot be answered where it asks: its ``reply_to``
        is not a reply channel (:class:`~daebus.protocol.ReplyChannels`), or its
        ``request_id`` is not a short string or a number. Such requests are dropped,
        with a warning at most every few seconds.
        """
        try:
            message = protocol.decode_object(delivery.data)
        except protocol.BadMessageError as exc:
            self._refuse_malformed(delivery, exc)
            return None
        request = PubSubRequest(message)
        request.channel = delivery.channel
        if not self.addressable(request, delivery.channel):
            return None
        response = PubSubResponse(
            self.publisher, request, max_message_size=self.app.max_message_size
        )
        table = self.app.action_handlers if kind == "request" else self.app.workflow_handlers
        name = message.get("action") if kind == "request" else message.get("workflow")
        if name is None and kind == "workflow":
            name = message.get("action")
        if flow.isEnabledFor(logging.DEBUG):
            flow.debug(
                "-> %s %s request_id=%s reply_to=%s payload=%s",
                shorten(delivery.channel),
                shorten(name),
                shorten(request.request_id),
                shorten(request.reply_to),
                preview(delivery.data),
            )
        if len(delivery.data) > self.app.max_message_size:
            self.refuse(
                response,
                f"request of {len(delivery.data)} bytes is over the "
                f"{self.app.max_message_size}-byte limit",
                kind="too large",
            )
            return None
        if not name:
            self.refuse(response, "request has no action", kind="no action")
            return None
        if not isinstance(name, str):
            self.refuse(
                response, f"action must be a string, not {type(name).__name__}", kind="no action"
            )
            return None
        handler = table.get(name)
        if handler is None and kind == "request":
            handler = self._builtin.get(name)
        if handler is None:
            self.refuse(
                response,
                f"Unknown action '{shorten(name)}' for service '{self.service}'",
                kind="unknown action",
            )
            return None
        return name, handler, context.MessageContext(self.app, "pubsub", request, response)

    def addressable(self, request: PubSubRequest, channel: str) -> bool:
        """Whether a request can be answered where it asks; sets where replies go.

        Without ``reply_to``, replies (the returned value, an error) go to
        ``<service>.responses`` when the request's ``service`` names this service or is
        absent (null too), and that is a reply channel; else nowhere. A request meant
        for another service, or with a junk ``service``, is still run, unanswered.
        """
        reply_to = request.reply_to
        if reply_to is None:
            service = request.service
            request.reply_channel = (
                self.replies.fallback(self.service)
                if service is None or service == self.service
                else None
            )
        else:
            refusal = self.replies.refusal(reply_to)
            if refusal is not None:
                self.throttle.log(
                    logging.WARNING,
                    "reply_to",
                    "dropped a request on %r unrun: its reply_to %s is %s",
                    shorten(channel),
                    shorten(reply_to),
                    refusal,
                )
                return False
        if not _is_short_id(request.request_id):
            self.throttle.log(
                logging.WARNING,
                "request_id",
                "dropped a request on %r unrun: its request_id is not a string of at most "
                "%d characters or a number: %s",
                shorten(channel),
                protocol.FIELD_LIMIT,
                shorten(request.request_id),
            )
            return False
        return True

    def _refuse_malformed(self, delivery: Delivery, exc: protocol.BadMessageError) -> None:
        """Answer bytes that are not a JSON object, if a reply address can be read in them."""
        address = protocol.recover_reply_address(delivery.data)
        if address is None:
            self.throttle.log(
                logging.WARNING,
                "not a request",
                "dropped a message on %r that cannot be answered (%s): %s",
                shorten(delivery.channel),
                shorten(str(exc)),
                preview(delivery.data),
            )
            return
        reply_to, request_id = address
        malformed = PubSubRequest({"reply_to": reply_to, "request_id": request_id})
        if self.addressable(malformed, delivery.channel):
            self.refuse(
                PubSubResponse(self.publisher, malformed),
                f"malformed request: {shorten(str(exc))}",
                kind="malformed",
            )

    def refuse_unrun(self, kind: str, delivery: Delivery, stopping: bool) -> None:
        """Answer a request that will not run with a busy error reply, if it can be answered.

        ``kind``: ``request``, or ``workflow`` (as the metrics count it).
        """
        admission = self.admission
        if stopping:
            admission.refused_at_stop += 1
            text = f"service {self.service!r} is stopping; the request was not run, try again"
        else:
            waiting = len(admission.requests)
            text = (
                f"service {self.service!r} is busy ({waiting} requests waiting); "
                "the request was not run, try again later"
            )
            self.throttle.log(
                logging.WARNING,
                "busy",
                "refused a request unrun on %r: %d handled at once and %d waiting (the limits)",
                shorten(delivery.channel),
                admission.capacity,
                waiting,
            )
        try:
            message = protocol.decode_object(delivery.data)
        except protocol.BadMessageError:
            return  # not a request: it would have been dropped anyway
        if self.metrics is not None:
            name = message.get("action")
            if kind == "workflow":
                name = message.get("workflow", name)
            self.metrics.refused(kind, name, "busy")
        # Not PubSubRequest(message): that would decode a string payload too.
        fields = ("reply_to", "request_id", "service")
        request = PubSubRequest({field: message.get(field) for field in fields})
        if not self.addressable(request, delivery.channel):
            return
        channel = request.reply_channel
        if channel is None:
            return
        data = protocol.encode_reply(
            protocol.STATUS_ERROR, protocol.busy_payload(text), request.request_id, True
        )
        sent_reply(channel, protocol.STATUS_ERROR, request.request_id, True, data)
        try:
            self.publisher.publish(channel, data)
        except TransportError as exc:  # the transport is closing under us
            logger.debug("could not refuse a request: %s", exc)

    async def _run_async(
        self, kind: str, name: str, handler: Callable[..., Any], ctx: context.MessageContext
    ) -> None:
        """An ``async def`` (or async generator) action on the loop; failures are answered."""
        try:
            await self.answer(name, handler, ctx, kind=kind)
        finally:
            self.admission.task_done()

    async def answer(
        self,
        name: str,
        handler: Callable[..., Any],
        ctx: context.MessageContext,
        *,
        redone_elsewhere: bool = False,
        kind: str = "request",
    ) -> None:
        """Run an action on the loop (a ``def`` one in a worker) and send its reply.

        A failure is answered with an error reply. One cut short by the service's stop
        is answered so too, unless ``redone_elsewhere``: another instance runs it again.
        ``kind`` is what the metrics count it as (``durable_request``, say).
        """
        traced = (
            None if self.tracing is None else self.tracing.request(self.service, name, ctx.request)
        )
        response = ctx.response
        metrics = self.metrics
        started = metrics.clock() if metrics is not None else 0.0
        status = "ok"
        try:
            result = await self.invoke(handler, ctx, (), response)
            with contextlib.suppress(TransportError):  # logged by the publisher, as below
                await response.flush()
            request = response.request
            # reply_to first: set on nearly every request, where reply_channel is a property.
            if not response.final_sent and (
                request.reply_to is not None or request.reply_channel is not None
            ):
                try:
                    count = response.send(result)
                except SerializationError as exc:
                    status = "error"
                    await _settled(
                        self.refuse(response, f"could not encode the reply: {exc}", kind="encode")
                    )
                    return
                if asyncio.isfuture(count):
                    # A reply the server did not take is the publisher's to log (once a
                    # period); the handler itself did not fail.
                    with contextlib.suppress(TransportError):
                        await count
        except asyncio.CancelledError:
            status = "error"
            if self.admission.stopping and not response.final_sent and not redone_elsewhere:
                # Abandoned at shutdown: say so rather than leave the caller to time out.
                self.refuse(
                    response,
                    f"service {self.service!r} stopped before the request finished",
                    kind="stopped",
                )
            raise
        except StartedTooLateError as exc:
            status = "refused"
            self.throttle.log(
                logging.WARNING,
                "started too late",
                "dropped a request for %r unrun: a worker was free for it only %s",
                shorten(name),
                exc,
            )
        except Exception as exc:
            status = "error"
            self._log_failure(name, exc)
            if not response.final_sent:
                await _settled(self.refuse(response, error_text(exc), log=False))
        finally:
            if traced is not None:
                traced.close()
            self.tally.requests += 1
            if metrics is not None:
                metrics.handled(kind, name, status, started)

    def _run_sync(
        self, kind: str, name: str, handler: Callable[..., Any], ctx: context.MessageContext
    ) -> None:
        """A plain ``def`` action, start to end in a worker: call, reply, free the slot."""
        response = ctx.response
        metrics = self.metrics
        started = metrics.clock() if metrics is not None else 0.0
        status = "ok"
        token = context.push(ctx)
        traced = None
        try:
            if self.tracing is not None:
                traced = self.tracing.request(self.service, name, response.request)
            try:
                result = self.call_sync(handler, (), response)
            except BaseException as exc:  # SystemExit too: one handler must not stop the service
                status = "error"
                self._log_failure(name, exc)
                if not response.final_sent:
                    self.refuse(response, error_text(exc), log=False)
                return
            request = response.request
            if response.final_sent or (request.reply_to is None and request.reply_channel is None):
                return
            try:
                response._send(protocol.STATUS_SUCCESS, result, True, detached=True)
            except SerializationError as exc:
                status = "error"
                self.refuse(response, f"could not encode the reply: {exc}", kind="encode")
            except TransportError as exc:
                self.throttle.log(
                    logging.ERROR,
                    "reply failed",
                    "could not reply to %s: %s",
                    request.reply_channel,
                    exc,
                )
        finally:
            if traced is not None:
                traced.close()
            context.pop(token)
            if metrics is not None:
                metrics.handled(kind, name, status, started)
            self.admission.job_done()

    def _log_failure(self, name: str, exc: BaseException) -> None:
        """Count and log a failed action (its traceback once a period per action)."""
        self.tally.request_failed()
        if self.tracing is not None:
            self.tracing.failed(exc)
        self.throttle.log(
            logging.ERROR,
            f"action {name}",
            "action %r of %r failed",
            shorten(name),
            self.service,
            exc_info=exc,
        )

    def refuse(
        self, response: PubSubResponse, message: str, *, log: bool = True, kind: str = "refused"
    ) -> Any:
        """Answer with an error reply if the request can be answered; log otherwise.

        On the loop this returns the publish's future (its failure is logged by the
        publisher); elsewhere the reply has gone out when it returns. Lines of one
        ``kind`` are logged at most once a period.
        """
        request = response.request
        message = shorten(message, _TEXT_LIMIT)
        if log:
            self.throttle.log(
                logging.WARNING,
                kind,
                "%s (request_id=%s)",
                message,
                shorten(request.request_id),
            )
        if request.reply_channel is None:
            return None
        try:
            return response.error(message)
        except (TransportError, SerializationError) as exc:
            self.throttle.log(
                logging.ERROR,
                "reply failed",
                "could not send the error reply to %s: %s",
                request.reply_channel,
                exc,
            )
            return None


async def _settled(sent: Any) -> None:
    """Wait for a publish's future, if any; its failure was logged by the publisher."""
    if asyncio.isfuture(sent):
        with contextlib.suppress(Exception):
            await sent
