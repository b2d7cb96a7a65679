"""Durable requests: a service's request stream, read by its instances as one group.

``send_request(action, payload, durable=True)`` appends the request (the same JSON as
on the service's channel, ``reply_to`` included) to the service's request stream
(:func:`daebus.protocol.request_stream_key`) instead of publishing it, with the time
its caller stops waiting (:data:`daebus.protocol.STREAM_DEADLINE_FIELD`). There it
waits while no instance runs. Every instance of the service reads the stream as a
member of the group named after the service (created at the stream's start, so that
requests sent before any instance ever ran are read too): each request is taken by
one instance, run as a request from the service's channel is, answered on the
caller's reply channel, and acknowledged and deleted from the stream once answered: the
stream holds only the requests still to answer.

A request that fails is answered with its error, as on the pub/sub path, and is not
tried again: its caller has its answer. One held by an instance that died is taken
by another once it has been idle :data:`MIN_IDLE_TIME` seconds, and run again, unless
its caller has stopped waiting meanwhile: a request past its deadline is dropped with
a log line rather than run late. One handed out :data:`MAX_DELIVERIES` times without
being answered (it kills its instance, say) is answered with an error instead.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from .. import protocol
from ..exceptions import TransportError
from ..pubsub import PubSubRequest, PubSubResponse
from ..transport import Delivery
from .consumer import StreamConsumer
from .invoke import START_BY

if TYPE_CHECKING:
    from ..transport import StreamEntry
    from . import ServiceRuntime

__all__ = ["MAX_DELIVERIES", "MIN_IDLE_TIME", "RequestConsumer"]

logger = logging.getLogger("daebus.durable")

#: How long a request held by an instance goes without news before another takes it:
#: the holder extends its claim every third of this while the request runs.
MIN_IDLE_TIME = 10.0
#: How many times a request may be handed out before it is answered with an error.
MAX_DELIVERIES = 3


class RequestConsumer(StreamConsumer):
    """This instance's member of the group that reads the service's request stream."""

    # Answered, a request is done with: the stream keeps only those still to answer,
    # so its length bound (MAXLEN) counts only a backlog.
    delete_when_done = True

    def __init__(self, runtime: ServiceRuntime) -> None:
        super().__init__(
            runtime,
            stream=protocol.request_stream_key(runtime.service),
            group=runtime.service,
            start="earliest",
            min_idle_time=MIN_IDLE_TIME,
            what=f"the durable requests of {runtime.service!r}",
        )
        self.requests = runtime.requests
        self.channel = protocol.service_channel(runtime.service)
        # Until when to look for requests other members left, though none is known:
        # those of an instance that just stopped or restarted go idle only later.
        self._reclaim_until = runtime.loop.time() + 2 * MIN_IDLE_TIME

    def should_reclaim(self) -> bool:
        """While other instances are known, and for twice :data:`MIN_IDLE_TIME` after.

        A lone instance has nobody to take from, and does not wake up to look; but the
        requests of an instance that stopped (cut short by its stop timeout), or of
        this one before a restart, only go idle long enough after it is gone.
        """
        now = self.loop.time()
        if self.runtime.instances.others:
            self._reclaim_until = now + 2 * MIN_IDLE_TIME
            return True
        return now < self._reclaim_until

    async def reclaim(self, min_idle_ms: int) -> None:
        """Take what other members left; a lone instance stops looking once none is left.

        With no other instance known, nobody else can take a request: when no other
        member holds any, there is nothing more to look for until another instance
        shows up, and an idle service need not wake up to look.
        """
        await super().reclaim(min_idle_ms)
        if not self.runtime.instances.others and self._reclaim_until:
            try:
                left = await self.transport.stream_pending_elsewhere(
                    self.stream, self.group, self.name
                )
            except TransportError:
                return  # looked at again next time
            if not left and not self.runtime.instances.others:
                self._reclaim_until = 0.0

    async def handle(self, entry: StreamEntry) -> None:
        """Run one durable request and answer it, or drop it if its caller is gone."""
        data = entry.fields.get(protocol.STREAM_DATA_FIELD, b"")
        late = self._late_by(entry)
        if late is not None:
            self.runtime.throttle.log(
                logging.WARNING,
                "late durable request",
                "dropped durable request %s for %r unrun: its caller stopped waiting %.1f s ago",
                entry.id,
                self.runtime.service,
                late,
            )
            self._count_refused()
            await self.ack(entry.id)
            return
        if entry.deliveries > MAX_DELIVERIES:
            self._refuse(entry, data)
            self._count_refused()
            await self.ack(entry.id)
            return
        accepted = self.requests.accept("request", Delivery(self.channel, data))
        if accepted is None:
            self._count_refused()
        else:
            name, handler, ctx = accepted
            request = ctx.request
            assert isinstance(request, PubSubRequest)
            request.message_id = entry.id
            request.delivery_count = entry.deliveries
            # Set in this entry's own task: a def action that waits for a worker past its
            # caller's deadline is not run at all.
            START_BY.set(self._deadline(entry))
            await self.requests.answer(
                name, handler, ctx, redone_elsewhere=True, kind="durable_request"
            )
        self.ack_soon(entry.id)

    def _count_refused(self) -> None:
        metrics = self.runtime.metrics
        if metrics is not None:
            metrics.refused("durable_request", None, "refused")

    @staticmethod
    def _deadline(entry: StreamEntry) -> float | None:
        """When (``time.time()``) a request's caller stops waiting; None if it says not.

        A deadline that is not a number of ms since the epoch (at most 15 digits) is
        none: the caller that wrote it is not a daebus caller.
        """
        field = entry.fields.get(protocol.STREAM_DEADLINE_FIELD, b"")
        if not (0 < len(field) <= 15 and field.isdigit()):
            return None
        return int(field) / 1000

    def _late_by(self, entry: StreamEntry) -> float | None:
        """How many seconds past its deadline a request is; None if not (or none)."""
        deadline = self._deadline(entry)
        late = None if deadline is None else time.time() - deadline
        return late if late is not None and late > 0 else None

    def _refuse(self, entry: StreamEntry, data: bytes) -> None:
        try:
            message = protocol.decode_object(data)
        except protocol.BadMessageError:
            return
        fields = ("reply_to", "request_id", "service")
        request = PubSubRequest({field: message.get(field) for field in fields})
        if not self.requests.addressable(request, self.channel):
            return
        text = (
            f"durable request {entry.id} was handed out {entry.deliveries} times "
            "without being answered (does it stop its instance?); it was not run again"
        )
        self.requests.refuse(PubSubResponse(self.runtime.replier, request), text)
