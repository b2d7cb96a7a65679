"""The app's telemetry switches, off until asked for: a part of :class:`~daebus.Daebus`.

:meth:`Telemetry.enable_metrics` attaches a Prometheus endpoint (:mod:`daebus.metrics`);
:meth:`Telemetry.enable_tracing` traces with OpenTelemetry (:mod:`daebus.tracing`). Each
needs an optional extra, imported only when its switch is turned on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from .exceptions import SetupError

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from .app import Daebus
    from .pubsub import PubSubBroadcast
    from .runtime import ServiceRuntime
    from .tracing import Tracing

__all__ = ["Telemetry"]


class Telemetry:
    """``enable_metrics`` and ``enable_tracing``, mixed into the app."""

    #: The :class:`~daebus.metrics.MetricsEndpoint` once :meth:`enable_metrics` is called.
    metrics: Any = None
    #: The tracing of the service's messages (:meth:`enable_tracing`); None: off.
    tracing: Tracing | None = None
    broadcast: PubSubBroadcast
    _runtime: ServiceRuntime | None

    def enable_metrics(
        self,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        registry: Any = None,
        http: bool = True,
    ) -> Any:
        """Count what the service handles as Prometheus metrics (from the next start).

        Served at ``/metrics`` by an attached ``DaebusHttp`` (unless ``http=False``:
        that port faces the network by default), and on ``host:port`` if ``port`` is
        given. Returns the ``CollectorRegistry`` (the app's own unless
        ``registry``); see :class:`daebus.metrics.MetricsEndpoint` and
        docs/observability.md. Needs ``pip install 'daebus[metrics]'``.

        Raises:
            SetupError: prometheus-client is not installed, metrics are on already, or
                the service is running.
        """
        if self._runtime is not None:
            raise SetupError("enable metrics before the service starts")
        try:
            from .metrics import MetricsEndpoint
        except ImportError as exc:
            raise SetupError("metrics need: pip install 'daebus[metrics]'") from exc
        endpoint = MetricsEndpoint(port=port, host=host, registry=registry, http=http)
        return cast("Daebus", self).attach(endpoint).registry

    def enable_tracing(self, tracer_provider: TracerProvider | None = None) -> Tracing:
        """Trace the service's messages with OpenTelemetry, from its next start on.

        Each request, broadcast and durable message handled, each one sent, and each
        HTTP request and WebSocket message gets a span, in the trace of the message
        that caused it (see docs/observability.md). ``tracer_provider``: by default
        the global one. Needs ``pip install 'daebus[tracing]'``.

        Raises:
            SetupError: OpenTelemetry is not installed, or the service is running.
        """
        if self._runtime is not None:
            raise SetupError("enable tracing before the service starts")
        from .tracing import Tracing

        self.tracing = self.broadcast.tracing = Tracing(tracer_provider)
        return self.tracing
