"""The running state of a service: its loop, transport, worker pools and dispatch.

One :class:`ServiceRuntime` exists per ``serve()``; it starts the service and wires the
parts, one module each:

- :mod:`.admission`: slots and back-pressure (what runs at once, what waits);
- :mod:`.requests`: requests, from the bytes read to the reply;
- :mod:`.instances`: the other instances of the service, and which one runs a request;
- :mod:`.broadcasts`: broadcasts, in listener batches;
- :mod:`.shared_listeners`: which instance handles a broadcast for a shared listener;
- :mod:`.durable`: durable listeners, consumer groups on streams;
- :mod:`.durable_requests`: the service's request stream, read as one group;
- :mod:`.invoke`: calling user code (async, generator, or ``def`` in a worker);
- :mod:`.jobs`: background jobs and thread tasks;
- :mod:`.publisher`: publishing from the loop or from threads;
- :mod:`.shutdown`: draining and closing;
- :mod:`.presence`: this instance's entry in the service registry, and its counts;
- :mod:`.readiness`: whether it is ready (``daebus health``, ``/readyz``);
- :mod:`.metrics`: its Prometheus metrics, when ``app.enable_metrics()`` turned them on;
- :mod:`.eager`, :mod:`.workers`, :mod:`.inbox`, :mod:`.loop`, :mod:`.throttle`:
  the machinery under them.

At most ``max_in_flight`` messages are handled at once; later ones wait in a bounded
queue (``max_queued`` requests, and ``max_queued_bytes`` of requests and broadcasts in
all). Past that a request is refused at once with a busy error reply and a broadcast is
dropped, with a warning. The service never stops reading its socket: if it did, the
queue would grow in the Redis server instead, which drops a subscriber past its
output-buffer limit and everything queued for it with it, without telling anyone.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .. import context, protocol
from ..exceptions import TransportError
from ..transport import Delivery, Subscription, Transport
from ..transport._url import redact_url
from .admission import Admission
from .broadcasts import Broadcasts
from .durable import DurableListeners
from .durable_requests import RequestConsumer
from .inbox import LoopInbox
from .instances import Instances
from .invoke import Invoker
from .jobs import BackgroundTask, Schedules
from .presence import Presence, Tally
from .publisher import Publisher
from .requests import Requests
from .shutdown import shut_down
from .throttle import LogThrottle
from .workers import WorkerPool

if TYPE_CHECKING:
    from ..app import Daebus
    from .metrics import Recorder

__all__ = ["ServiceRuntime"]

logger = logging.getLogger("daebus.runtime")


class ServiceRuntime:
    """A running service: starts it, holds its parts, and stops it."""

    def __init__(self, app: Daebus, service: str, transport: Transport, instance_id: str) -> None:
        self.app = app
        self.service = service
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.throttle = LogThrottle(logger, self.loop)
        #: The app's :class:`~daebus.tracing.Tracing`, or None: tracing is off.
        self.tracing = app.tracing
        self.replies = protocol.ReplyChannels(service, app.reply_channels)
        self.inbox = LoopInbox(self.loop)
        self.executor = WorkerPool(self.loop, app.max_workers, f"daebus_{service}")
        # Jobs and hooks get their own threads, so a busy worker pool cannot starve them.
        self.job_executor = WorkerPool(self.loop, 8, f"daebus_{service}_job")
        self.invoker = Invoker(self.loop, self.executor)
        #: ``await runtime.invoke(func, ctx, args)``: see :meth:`.invoke.Invoker.invoke`.
        self.invoke = self.invoker.invoke
        self.admission = Admission(app, self.loop)
        #: What was handled and what failed, published with the registry entry.
        self.tally = Tally()
        #: True once started: subscribed, jobs started, start hooks run.
        self.started = False
        #: What records the Prometheus metrics; None while they are off (the default).
        self.metrics: Recorder | None = None
        if app.metrics is not None:
            from .metrics import Recorder, families_for  # prometheus-client: only when on

            families = families_for(app.metrics.registry, app.metrics.buckets)
            self.metrics = Recorder(families, self)
        #: Publishes broadcasts and durable messages; :attr:`replier` publishes replies.
        self.publisher = Publisher(self, "broadcast")
        self.replier = Publisher(self, "reply")
        self.instances = Instances(self, instance_id)
        self.requests = Requests(self)
        self.broadcasts = Broadcasts(self)
        self.durable = DurableListeners(self)
        self.request_stream = RequestConsumer(self)
        self.presence = Presence(self)
        self.admission.connect(
            start_request=self.requests.start,
            refuse_unrun=self.requests.refuse_unrun,
            start_broadcasts=self.broadcasts.start,
            drop_held=self.broadcasts.drop_held,
        )
        self.schedules = Schedules(self)
        self.subscriptions: dict[tuple[str, str], Subscription] = {}
        # The loop only keeps weak references to tasks: hold on to fire-and-forget ones.
        self._side_tasks: set[asyncio.Task[Any]] = set()

    # -- start -----------------------------------------------------------------------
    async def start(self) -> None:
        """Subscribe everything, start jobs and threads, then run the start hooks."""
        app = self.app
        if self.metrics is not None:
            self.metrics.open()
        self.transport.add_batch_end(self.broadcasts.start)
        # Before the service's channel: every request this instance gets is then one
        # the others know to claim (see .instances).
        await self.instances.join()
        await self._subscribe("request", protocol.service_channel(self.service))
        if app.workflow_handlers:
            await self._subscribe("workflow", protocol.workflow_channel(self.service))
        for channel in list(app._listeners):
            await self.subscribe_listener(channel)
        await self.durable.refresh()
        await self._read_request_stream()
        logger.info(
            "service %r listening on %r (%d action(s), %d listener(s)) via %s as instance %s%s",
            self.service,
            protocol.service_channel(self.service),
            len(app.action_handlers),
            sum(map(len, app._listeners.values())),
            redact_url(self.transport.url),
            self.instances.id,
            f" (sharing requests with {len(self.instances.others)} other(s))"
            if self.instances.others
            else "",
        )
        for task in app.background_tasks:
            self.schedule(task)
        for name, thread_task in list(app.thread_tasks.items()):
            if thread_task.auto_start:
                app.start_thread(name)
        for hook in list(app._on_start_handlers):
            await self.run_hook(hook, "start")
        self.started = True
        await self.presence.join()

    async def _read_request_stream(self) -> None:
        """Read the durable requests, once the group that holds them exists."""
        try:
            await self.request_stream.create_group()
        except TransportError as exc:  # the consumer tries again as it reads
            logger.warning("cannot create the group of %r: %s", self.request_stream, exc)
        self.request_stream.start()

    async def _subscribe(self, kind: str, name: str) -> None:
        if (kind, name) in self.subscriptions:
            return
        if kind == "listener":
            handler: Callable[[Delivery], Awaitable[None] | None] = self.broadcasts.on_broadcast
            # Before the first message can arrive: replies never go where we listen.
            self._listening_on([n for k, n in self.subscriptions if k == "listener"] + [name])
        else:
            handler = functools.partial(self.requests.on_request, kind)
        self.subscriptions[kind, name] = await self.transport.subscribe(
            name, handler, pattern=kind == "listener" and protocol.is_pattern(name)
        )

    def _listening_on(self, listened: list[str]) -> None:
        self.replies.listening_on(
            [n for n in listened if not protocol.is_pattern(n)],
            [n for n in listened if protocol.is_pattern(n)],
        )

    async def subscribe_listener(self, channel: str) -> None:
        """Start receiving broadcasts for a listener's channel or pattern."""
        await self._subscribe("listener", channel)
        self.broadcasts.subscribed(channel)

    async def unsubscribe_listener(self, channel: str) -> None:
        """Stop receiving ``channel`` unless a listener was added to it meanwhile."""
        if channel in self.app._listeners:
            return
        # Forgotten before the wait: a listener added meanwhile subscribes afresh.
        subscription = self.subscriptions.pop(("listener", channel), None)
        if subscription is None:
            return
        self._listening_on([n for k, n in self.subscriptions if k == "listener"])
        await subscription.unsubscribe()

    def schedule(self, task: BackgroundTask) -> None:
        """Start (or restart) the schedule of a background job."""
        self.schedules.schedule(task)

    def keep(self, task: asyncio.Task[Any]) -> None:
        """Hold a reference to a fire-and-forget task until it finishes."""
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def run_hook(self, hook: Callable[..., Any], what: str) -> None:
        """Run a start/stop hook with the app context; failures are logged."""
        try:
            await self.invoke(
                hook, context.MessageContext(self.app), (), executor=self.job_executor
            )
        except Exception:
            logger.exception("%s hook %s failed", what, getattr(hook, "__name__", hook))

    # -- state, for the app and tests ------------------------------------------------
    @property
    def stopping(self) -> bool:
        """True once the service has begun to stop."""
        return self.admission.stopping

    @property
    def in_flight(self) -> set[asyncio.Task[Any]]:
        """The tasks of messages being handled that waited for something."""
        return self.admission.in_flight

    @property
    def jobs(self) -> int:
        """``def`` actions running (or queued) in the workers."""
        return self.admission.jobs

    @property
    def active(self) -> int:
        """Messages being handled: the slots in use."""
        return self.admission.active

    @property
    def queued(self) -> int:
        """Messages read and waiting for a slot (requests and broadcasts)."""
        return self.admission.queued

    @property
    def busy(self) -> int:
        """How many messages are being handled (tasks and ``def`` actions)."""
        return self.admission.busy

    async def settle(self) -> None:
        """Wait until no message is handled or waits, including ``def`` actions in workers."""
        await self.admission.settle()

    # -- stop ------------------------------------------------------------------------
    async def shutdown(self, timeout: float) -> None:
        """Stop taking messages, drain in-flight work, stop jobs and threads, close.

        See :mod:`.shutdown`.
        """
        await self.presence.leave()  # gone from the registry at once
        self.request_stream.stop_reading()
        await self.durable.stop_reading(timeout)
        await shut_down(self, timeout)
        await self.durable.leave()
        await self.request_stream.leave_group()
        self.durable.close()
        self.request_stream.close()
        if self.metrics is not None:
            self.metrics.close()
