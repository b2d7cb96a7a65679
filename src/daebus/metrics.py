"""Serving a service's Prometheus metrics: ``/metrics``, on the HTTP port or one of its own.

``app.enable_metrics()`` attaches a :class:`MetricsEndpoint`. With a ``DaebusHttp``
attached too, that serves ``GET /metrics``; with ``port=``, the endpoint listens on a
port of its own as well (``127.0.0.1`` unless told otherwise), with an aiohttp server
on the service's loop. What is measured, and how, is :mod:`daebus.runtime.metrics`'s;
docs/observability.md lists every metric.

Needs prometheus-client: ``pip install daebus[metrics]``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import choose_encoder

from .exceptions import SetupError
from .runtime.metrics import DEFAULT_BUCKETS

if TYPE_CHECKING:
    from .app import Daebus
    from .components import Component, HttpHandler

__all__ = ["METRICS_PATH", "MetricsEndpoint"]

log = logging.getLogger("daebus.metrics")

#: Where the metrics are served, on the HTTP component's port and on the endpoint's own.
METRICS_PATH = "/metrics"


class MetricsEndpoint:
    """The component that serves an app's metrics; see :meth:`Daebus.enable_metrics`.

    ``app.enable_metrics(...)`` attaches one; ``app.attach(MetricsEndpoint(...))`` does
    the same with every option.

    Args:
        port: listen on this port too (0: any free one, read :attr:`port` once
            started); None: only on ``DaebusHttp``'s port, if one is attached.
        host: the address of that port. The default, ``127.0.0.1``, lets only this
            machine scrape; give ``"0.0.0.0"`` for a Prometheus elsewhere.
        registry: where the metrics are registered; by default a registry of the
            app's own, so that two apps in one process do not clash. Pass
            ``prometheus_client.REGISTRY`` to serve them with the process's other
            metrics (the apps on it share the families, told apart by ``service``).
        buckets: the upper bounds of the duration histograms, in seconds.
        http: serve ``/metrics`` on ``DaebusHttp``'s port too (the default). That port
            is bound to ``0.0.0.0`` unless told otherwise: whoever reaches the app's
            routes reads its metrics. False keeps them to the endpoint's own port.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        registry: CollectorRegistry | None = None,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        http: bool = True,
    ) -> None:
        if port is not None and (not isinstance(port, int) or not 0 <= port <= 65535):
            raise SetupError(f"port must be an int from 0 to 65535, got {port!r}")
        if port is None and not http:
            raise SetupError("metrics served nowhere: give a port of their own with http=False")
        self.port = port
        # The port asked for: 0 stays "any free one" at the next start of a restarted app.
        self._asked_port = port
        self.host = host
        self.registry = registry if registry is not None else CollectorRegistry()
        self.buckets = tuple(buckets)
        self.http = http
        self.daemon: Daebus | None = None
        self._runner: web.AppRunner | None = None

    def __repr__(self) -> str:
        where = f" {self.host}:{self.port}" if self.port is not None else ""
        return f"<MetricsEndpoint{where}>"

    @property
    def url(self) -> str | None:
        """The URL of the endpoint's own port, once it listens (None without one)."""
        if self._runner is None or self.port is None:
            return None
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}{METRICS_PATH}"

    # -- the component protocol (daebus.components.Component) --------------------------
    def attach(self, app: Daebus) -> None:
        """Called by ``app.attach()``: sets ``app.metrics``."""
        if self.daemon is not None and self.daemon is not app:
            raise SetupError("this MetricsEndpoint is already attached to another app")
        if app.metrics is not None and app.metrics is not self:
            raise SetupError(f"the metrics of app {app.name!r} are on already")
        self.daemon = app
        app.metrics = self

    def refresh_handlers(self, app: Daebus) -> None:
        """Nothing to take: the endpoint serves one path."""

    def http_mounts(self, app: Daebus) -> list[tuple[str, HttpHandler]]:
        """``/metrics`` on ``DaebusHttp``'s port."""
        return [(METRICS_PATH, self.handle)] if self.http and app is self.daemon else []

    async def start_async(self, app: Daebus) -> None:
        """Listen on the endpoint's own port, if it has one."""
        if self._asked_port is None or self._runner is not None:
            return
        web_app = web.Application()
        web_app.router.add_get(METRICS_PATH, self.handle)
        runner = web.AppRunner(web_app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._asked_port).start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(
                exc.errno,
                f"the metrics endpoint cannot listen on {self.host}:{self._asked_port}: "
                f"{exc.strerror or exc} (choose another with enable_metrics(port=...))",
            ) from exc
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("metrics served at %s", self.url)

    async def stop_async(self) -> None:
        """Stop listening on the endpoint's own port."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- serving -----------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET /metrics``: in the format the scraper asks for (``Accept``), else text."""
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        await self.refresh()
        return web.Response(body=encoder(self.registry), headers={"Content-Type": content_type})

    async def render(self) -> bytes:
        """The registry's metrics in Prometheus's text format, the server's figures fresh."""
        await self.refresh()
        return generate_latest(self.registry)

    async def refresh(self) -> None:
        """Ask the server for the figures read at scrape time (the durable groups')."""
        app = self.daemon
        runtime = app._runtime if app is not None else None
        if runtime is not None and runtime.metrics is not None:
            await runtime.metrics.refresh()


if TYPE_CHECKING:  # mypy checks that the endpoint keeps to the protocols the app drives
    _component: type[Component] = MetricsEndpoint
