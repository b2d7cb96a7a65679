"""The Prometheus metrics of a running service, and what records them.

Turned on with ``app.enable_metrics()`` (docs/observability.md lists every metric).
Off, the runtime holds ``runtime.metrics = None`` and each message costs one test of
it; prometheus-client is not even imported. On, each handled message bumps a counter
and a histogram through a :class:`Recorder`. Those per-message figures are plain numbers
under one lock (:class:`_MessageCounts`), made into metric families only when scraped:
prometheus-client's own counters and histograms cost several thousand instructions an
update, and a handled message makes three.

Labels are bounded: an action's registered name, a listener's registered channel or
pattern (never the concrete channel a pattern matched), an HTTP route's template;
never a request id, a reply channel or a message id. What is not registered (an
unknown action, a path no route matches) counts under :data:`UNKNOWN`.

What a scrape can read from state the service keeps anyway (slots in use, waiting
messages, WebSocket connections) is read then, by one collector per registry
(:class:`_LiveCollector`). So are the pending and lag of the durable groups the
service reads: asked of the server as a scrape begins (:meth:`Recorder.refresh`), with
a short timeout, never per message.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import threading
import time
import weakref
from collections.abc import Container, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ..exceptions import DaebusError

if TYPE_CHECKING:
    from . import ServiceRuntime

__all__ = ["DEFAULT_BUCKETS", "UNKNOWN", "Families", "Recorder", "families_for"]

logger = logging.getLogger("daebus.metrics")

#: The label value of what is not registered: an unknown action, a path without route.
UNKNOWN = "<unknown>"
#: Handler durations, in seconds: from a fast in-process handler to a slow remote call.
DEFAULT_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: How long a scrape waits for the server's figures on the durable groups.
DURABLE_STATS_TIMEOUT = 1.0
#: The HTTP methods counted by name; any other counts as ``OTHER``: a client picks it.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Families:
    """The metric families of one registry, shared by the apps that use it.

    Made once per registry (:func:`families_for`): two apps on the global registry
    then share the families, told apart by their ``service`` label, instead of
    failing to register the same names twice.
    """

    def __init__(self, registry: CollectorRegistry, buckets: Sequence[float]) -> None:
        # Not kept: the registry is the key of the weak table that holds this object.
        self.messages = _MessageCounts(buckets)
        registry.register(self.messages)
        self.reconnects = Counter(
            "daebus_transport_reconnects",
            "Times the connection carrying the subscriptions was lost and reconnecting began.",
            ["service"],
            registry=registry,
        )
        self.retries = Counter(
            "daebus_durable_retries",
            "Durable messages whose listener failed and that will be tried again.",
            ["service", "channel", "group"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "daebus_durable_dead_letters",
            "Durable messages moved to their group's dead-letter stream.",
            ["service", "channel", "group"],
            registry=registry,
        )
        self.http_requests = Counter(
            "daebus_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["service", "method", "route", "status"],
            registry=registry,
        )
        self.http_duration = Histogram(
            "daebus_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template.",
            ["service", "method", "route"],
            buckets=buckets,
            registry=registry,
        )
        self.websocket_messages = Counter(
            "daebus_websocket_messages_received",
            "WebSocket frames received from clients.",
            ["service"],
            registry=registry,
        )
        self.live = _LiveCollector()
        registry.register(self.live)


_families: weakref.WeakKeyDictionary[CollectorRegistry, Families] = weakref.WeakKeyDictionary()
_families_lock = threading.Lock()


def families_for(registry: CollectorRegistry, buckets: Sequence[float]) -> Families:
    """The families of ``registry``, made on first use (the first caller's buckets hold)."""
    with _families_lock:
        found = _families.get(registry)
        if found is None:
            found = _families[registry] = Families(registry, buckets)
        return found


class Recorder:
    """What one running service records: ``runtime.metrics`` while metrics are on.

    Its methods are called where a message ends (on the loop, or in a worker for a
    ``def`` action): each bumps a labelled child it keeps, made on first use.
    """

    #: The clock of the durations: ``started = metrics.clock()`` as a handler starts.
    clock = staticmethod(time.perf_counter)

    def __init__(self, families: Families, runtime: ServiceRuntime) -> None:
        self.families = families
        self.runtime = runtime
        self.service = runtime.service
        self._messages = families.messages
        self._http: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._durable: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._reconnects = families.reconnects.labels(self.service)
        self._websocket = families.websocket_messages.labels(self.service)
        #: (channel, group) -> (pending, lag) as the server last said; lag None if unknown.
        self.durable_stats: dict[tuple[str, str], tuple[int, int | None]] = {}
        self._reading: asyncio.Future[None] | None = None

    def open(self) -> None:
        """Start counting: show the live figures, count the reconnects."""
        self.families.live.add(self)
        self.runtime.transport.add_disconnect_handler(self._disconnected)

    def close(self) -> None:
        """The service stops: its live figures go; its counters stay in the registry."""
        self.families.live.discard(self)
        self.runtime.transport.remove_disconnect_handler(self._disconnected)
        if self._reading is not None:
            self._reading.cancel()

    # -- per message -------------------------------------------------------------------
    def handled(self, kind: str, name: str, status: str, started: float) -> None:
        """A handler ended (``status`` ok or error) after starting at ``started``.

        ``refused``: the message was not run after all (a durable request a worker was
        free for only after its caller gave up): counted, but it took no handler time.
        """
        elapsed = time.perf_counter() - started
        messages = self._messages
        key = (self.service, kind, name, status)
        # One lock for every count: a def action ends in its worker thread.
        with messages.lock:
            received = messages.received
            received[key] = received.get(key, 0) + 1
            if status == "refused":
                return
            durations = messages.durations.get(key[:3])
            if durations is None:
                durations = messages.durations[key[:3]] = _Durations(len(messages.bounds))
            durations.counts[bisect.bisect_left(messages.bounds, elapsed)] += 1
            durations.total += elapsed

    def refused(self, kind: str, name: Any, status: str) -> None:
        """A message was not run: ``busy`` (no room for it) or ``refused`` (not runnable).

        ``name`` is what the message asked for: counted under it only if registered.
        """
        app = self.runtime.app
        table: Container[Any] = (
            app._listeners
            if kind == "broadcast"
            else app.workflow_handlers
            if kind == "workflow"
            else app.action_handlers
        )
        # Any JSON value may come in a message: only a registered name is a label.
        label = name if isinstance(name, str) and name in table else UNKNOWN
        key = (self.service, kind, label, status)
        messages = self._messages
        with messages.lock:
            messages.received[key] = messages.received.get(key, 0) + 1

    def published(self, kind: str, count: int = 1) -> None:
        """``count`` messages were handed to the server: ``reply``, ``broadcast``, ``durable``."""
        messages = self._messages
        key = (self.service, kind)
        with messages.lock:
            messages.published[key] = messages.published.get(key, 0) + count

    def durable_retry(self, channel: str, group: str) -> None:
        """A durable message failed and will be tried again."""
        self._durable_children(channel, group)[0].inc()

    def dead_letter(self, channel: str, group: str) -> None:
        """A durable message was moved to its group's dead-letter stream."""
        self._durable_children(channel, group)[1].inc()

    def http_request(self, method: str, route: str, status: int, started: float) -> None:
        """An HTTP request was answered (``route``: its template, or :data:`UNKNOWN`)."""
        elapsed = time.perf_counter() - started
        if method not in _METHODS:
            method = "OTHER"
        key = (method, route, status)
        children = self._http.get(key)
        if children is None:
            families = self.families
            children = self._http[key] = (
                families.http_requests.labels(self.service, method, route, str(status)),
                families.http_duration.labels(self.service, method, route),
            )
        children[0].inc()
        children[1].observe(elapsed)

    def websocket_message(self) -> None:
        """A WebSocket client sent a frame."""
        self._websocket.inc()

    def _durable_children(self, channel: str, group: str) -> tuple[Any, Any]:
        children = self._durable.get((channel, group))
        if children is None:
            families = self.families
            children = self._durable[channel, group] = (
                families.retries.labels(self.service, channel, group),
                families.dead_letters.labels(self.service, channel, group),
            )
        return children

    def _disconnected(self, _error: Exception) -> None:
        self._reconnects.inc()

    # -- at scrape time ----------------------------------------------------------------
    async def refresh(self, timeout: float = DURABLE_STATS_TIMEOUT) -> None:
        """Ask the server for the pending and lag of the groups this service reads.

        Scrapes that come while a read is under way wait for that one: one thread and
        one connection at a time, however many scrape at once. A scrape waits at most
        ``2 * timeout``; a server that cannot be read drops the figures (absent, not
        stale: a frozen lag of 0 would look healthy).
        """
        reading = self._reading
        # A read under way on another loop (render() run from a thread of the program's
        # own) cannot be awaited here.
        if (
            reading is None
            or reading.done()
            or reading.get_loop() is not asyncio.get_running_loop()
        ):
            reading = self._reading = asyncio.ensure_future(self._read(timeout))
        try:
            await asyncio.wait_for(asyncio.shield(reading), timeout * 2)
        except asyncio.TimeoutError:
            logger.debug("the durable groups' figures are late: the scrape goes on without")

    async def _read(self, timeout: float) -> None:
        runtime = self.runtime
        groups = [
            (consumer.channel, consumer.stream, consumer.group)
            for consumer in list(runtime.durable.consumers.values())
        ]
        consumer = runtime.request_stream
        groups.append((consumer.channel, consumer.stream, consumer.group))
        url = runtime.transport.url
        try:
            # Bounded by the socket's timeouts (each connect and command), not here:
            # cancelling cannot stop the thread, and the next scrape would start another.
            self.durable_stats = await asyncio.to_thread(_read_groups, url, groups, timeout)
        except (DaebusError, OSError) as exc:
            self.durable_stats = {}
            logger.debug("could not read the durable groups' figures: %s", exc)
        except Exception:  # a scrape must be answered, whatever the server said
            self.durable_stats = {}
            logger.warning("could not read the durable groups' figures", exc_info=True)


def _read_groups(
    url: str, groups: list[tuple[str, str, str]], timeout: float
) -> dict[tuple[str, str], tuple[int, int | None]]:
    """``XINFO GROUPS`` of each stream, for the groups named (in a thread)."""
    from .._admin import open_admin  # here: it loads redis-py's blocking client

    found: dict[tuple[str, str], tuple[int, int | None]] = {}
    with open_admin(url, timeout=timeout) as admin:
        for channel, stream, group in groups:
            for info in admin.stream_groups(stream):
                if info["name"] == group:
                    found[channel, group] = (info["pending"], info["lag"])
    return found


class _Durations:
    """One histogram's figures: the count of each bucket (not cumulative), and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self, bounds: int) -> None:
        self.counts = [0] * (bounds + 1)  # the last: above every bound (+Inf)
        self.total = 0.0


class _MessageCounts(Collector):
    """Messages received and published, and handler durations, of a registry's services.

    Kept for the life of the registry, as counters are: a service that stops and
    starts again in the process counts on from where it was.
    """

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(sorted(float(bound) for bound in buckets))
        self.lock = threading.Lock()
        #: (service, kind, name, status) -> messages.
        self.received: dict[tuple[str, str, str, str], int] = {}
        #: (service, kind) -> messages.
        self.published: dict[tuple[str, str], int] = {}
        #: (service, kind, name) -> durations.
        self.durations: dict[tuple[str, str, str], _Durations] = {}

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        received, published, durations = self._families()
        with self.lock:
            for message, count in self.received.items():
                received.add_metric(list(message), count)
            for sent, count in self.published.items():
                published.add_metric(list(sent), count)
            taken = [(k, list(d.counts), d.total) for k, d in self.durations.items()]
        bounds = [*map(floatToGoString, self.bounds), "+Inf"]
        for labels, counts, total in taken:
            cumulative, running = [], 0
            for bound, count in zip(bounds, counts, strict=True):
                running += count
                cumulative.append((bound, running))
            durations.add_metric(list(labels), cumulative, total)
        return [received, published, durations]

    @staticmethod
    def _families() -> list[Any]:
        return [
            CounterMetricFamily(
                "daebus_messages_received",
                "Messages handled or refused, by kind, action or listener channel, and status.",
                labels=["service", "kind", "name", "status"],
            ),
            CounterMetricFamily(
                "daebus_messages_published",
                "Messages published by the service: replies, broadcasts, durable messages.",
                labels=["service", "kind"],
            ),
            HistogramMetricFamily(
                "daebus_handler_duration_seconds",
                "Time from a handler's start to its end (reply sent), by kind and name.",
                labels=["service", "kind", "name"],
            ),
        ]


class _LiveCollector(Collector):
    """The figures read at scrape time, of every running service using a registry."""

    def __init__(self) -> None:
        self._recorders: weakref.WeakSet[Recorder] = weakref.WeakSet()

    def add(self, recorder: Recorder) -> None:
        self._recorders.add(recorder)

    def discard(self, recorder: Recorder) -> None:
        self._recorders.discard(recorder)

    def describe(self) -> Iterable[Metric]:
        # The names alone, so that a registry checking for clashes does not collect.
        return list(_live_families())

    def collect(self) -> Iterable[Metric]:
        in_flight, queued, sockets, pending, lag = _live_families()
        # Instances of one service in one process (on a shared registry) have the same
        # labels: one sample each, never two of the same series. Their slots add up; a
        # group's pending and lag are the server's, the same for every instance.
        busy: dict[str, list[int]] = {}
        groups: dict[tuple[str, str, str], tuple[int, int | None]] = {}
        for recorder in list(self._recorders):
            runtime = recorder.runtime
            service = recorder.service
            admission = runtime.admission
            websocket = runtime.app.websocket
            clients = websocket.get_client_count() if websocket is not None else None
            figures = busy.setdefault(service, [0, 0, 0, 0])
            figures[0] += admission.active
            figures[1] += admission.queued
            if clients is not None:
                figures[2] += clients
                figures[3] = 1
            for (channel, group), stats in recorder.durable_stats.items():
                groups[service, channel, group] = stats
        for service, (active, waiting, clients, serves_sockets) in busy.items():
            in_flight.add_metric([service], active)
            queued.add_metric([service], waiting)
            if serves_sockets:
                sockets.add_metric([service], clients)
        for labels, (waiting, behind) in groups.items():
            pending.add_metric(list(labels), waiting)
            if behind is not None:
                lag.add_metric(list(labels), behind)
        return [in_flight, queued, sockets, pending, lag]


def _live_families() -> Iterator[GaugeMetricFamily]:
    yield GaugeMetricFamily(
        "daebus_in_flight", "Messages being handled now (slots in use).", labels=["service"]
    )
    yield GaugeMetricFamily(
        "daebus_queued", "Messages read and waiting for a slot.", labels=["service"]
    )
    yield GaugeMetricFamily(
        "daebus_websocket_connections", "WebSocket clients connected.", labels=["service"]
    )
    labels = ["service", "channel", "group"]
    yield GaugeMetricFamily(
        "daebus_durable_pending",
        "Durable messages handed out to the group and not yet acknowledged.",
        labels=labels,
    )
    yield GaugeMetricFamily(
        "daebus_durable_lag", "Durable messages the group has yet to read.", labels=labels
    )
