"""The :class:`DaebusHttp` component: its settings, and its part in the app's life.

It takes the app's routes as they are registered, asks the other components what they
serve on the HTTP port, and starts and stops the aiohttp server with the app. Each
request is answered by its :class:`~daebus.http._dispatch.Dispatcher`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .._routes import RouteTable
from ..components import MountProvider
from ..exceptions import SetupError
from ..runtime.throttle import LogThrottle
from ..runtime.workers import WorkerPool
from ._cors import CorsPolicy
from ._dispatch import REFUSED_LOG_EVERY, Dispatcher, MountHandler
from ._health import health_mounts
from ._log import ServerLog
from ._static import StaticFolder

if TYPE_CHECKING:
    from ..app import Daebus
    from ..components import Component

__all__ = ["DaebusHttp"]

# The name users know the component's logger by, whatever module it is written in.
log = logging.getLogger("daebus.http")

#: Seconds aiohttp gets to close the connections once our own shutdown wait is over:
#: by then every request has been answered or cancelled, so this is a safety net only.
_CLOSE_TIMEOUT = 1.0


class DaebusHttp:
    """Serve the app's HTTP routes on ``host:port`` with aiohttp, on the service's loop.

    Args:
        port: the TCP port; ``0`` picks a free one (read :attr:`port` once started).
        host: the address to listen on. The default ``"0.0.0.0"`` (all IPv4 interfaces,
            as in 0.0.31) lets other devices reach the service, which kiosk and IoT
            setups rely on; give ``"127.0.0.1"`` to accept local clients only. The
            address is logged at start.
        cors_config: cross-origin rules, see :class:`~daebus.http.CorsPolicy`; None sends no CORS
            headers. Whatever it says, a POST (or any method but GET, HEAD and OPTIONS)
            from a browser page of another origin that it does not allow gets 403
            without running the route, unless the handler is marked
            :func:`~daebus.http.cross_origin`. A page's own origin (the ``Host`` the
            request was sent to) and clients that send no ``Origin`` (not browsers) are
            always let through.
        max_body_size: largest request body in bytes (413 above it); 1 MiB by default.
        read_timeout: seconds a client has to send the whole body once the headers are
            in (408 after it), so a slow client cannot hold a request open.
        keepalive_timeout: seconds an idle keep-alive connection, or one that has not
            sent a complete request head, is kept open.
        max_concurrent: requests handled at once (``def`` and ``async def`` routes);
            past it a request gets 503 with ``Retry-After`` at once, so a burst cannot
            queue work without limit.
        max_workers: threads running ``def`` routes, the component's own (None: the
            app's ``max_workers``). They are not the app's pool, so slow routes never
            delay Redis actions; routes past this many wait for a thread (up to
            ``max_concurrent`` in all).
        shutdown_timeout: seconds the stop waits for requests in progress (None: the
            app's ``shutdown_timeout``). Then a ``def`` route still running gets a 503
            sent for it (its thread cannot be killed and is left to finish) and every
            other request is cancelled and its connection closed, so the stop takes at
            most this long, plus a moment to close the connections.
        debug: put the exception text of a failing handler in its 500 body. None (the
            default) follows ``app.run(debug=...)``.
        access_log: log every request to ``daebus.http.access``.
        health: serve ``GET /healthz`` (200 while the service's loop answers) and
            ``GET /readyz`` (200 when the instance is ready: started, subscribed, not
            stopping, every ``@app.health_check`` passing; else 503 with the reasons),
            for the probes of a supervisor or a load balancer. They win over routes
            of the same paths.

    Failing to listen (the port is taken) makes the service's start fail with an
    ``OSError`` saying so, instead of running without HTTP as 0.0.31 did. There is no
    ``start()`` / ``stop()``: the server starts and stops with the app.
    """

    def __init__(
        self,
        port: int = 8080,
        host: str = "0.0.0.0",
        cors_config: Mapping[str, Any] | None = None,
        *,
        max_body_size: int = 1024 * 1024,
        read_timeout: float = 30.0,
        keepalive_timeout: float = 15.0,
        max_concurrent: int = 64,
        max_workers: int | None = None,
        shutdown_timeout: float | None = None,
        debug: bool | None = None,
        access_log: bool = False,
        health: bool = False,
    ) -> None:
        if max_concurrent < 1:
            raise SetupError("max_concurrent must be at least 1")
        if max_workers is not None and max_workers < 1:
            raise SetupError("max_workers must be at least 1")
        self.port = port
        self.host = host
        self.max_body_size = max_body_size
        self.read_timeout = read_timeout
        self.keepalive_timeout = keepalive_timeout
        self.max_concurrent = max_concurrent
        self.max_workers = max_workers
        self.shutdown_timeout = shutdown_timeout
        self.debug = debug
        self.access_log = access_log
        self.health = health
        self.daemon: Daebus | None = None
        #: ``daebus.<app name>.http`` once attached (0.0.31's attribute): what this
        #: component logs about requests and its server goes there.
        self.logger = log
        self._dispatcher = Dispatcher(self)
        self.cors_config: dict[str, Any] | None = None
        if cors_config:
            self.configure_cors(cors_config)
        self._taken = 0  # how many entries of app.routes the table has taken
        self._last_taken: Any = None
        self._mount_providers: list[Component] = []
        self._runner: web.AppRunner | None = None

    def __repr__(self) -> str:
        state = "listening" if self._runner is not None else "stopped"
        return f"<DaebusHttp {self.host}:{self.port} {state}>"

    @property
    def app(self) -> Daebus | None:
        """The app this component is attached to."""
        return self.daemon

    @property
    def is_running(self) -> bool:
        """True while the server listens."""
        return self._runner is not None

    @property
    def url(self) -> str:
        """The server's base URL, e.g. ``http://127.0.0.1:8080`` (loopback for 0.0.0.0)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def routes(self) -> Mapping[str, Mapping[str, Any]]:
        """The served routes as 0.0.31 kept them: path -> ``{"function", "methods"}``.

        A read-only snapshot, in registration order. When several registrations share
        a path, ``methods`` lists all of its methods, ``function`` is the handler
        registered last, and ``handlers`` maps each method to its own handler.
        """
        return MappingProxyType(self._dispatcher.table.describe())

    # -- the component protocol (daebus.components.Component) --------------------------
    def attach(self, app: Daebus) -> None:
        """Called by ``app.attach(http)``: sets ``app.http``."""
        if self.daemon is not None and self.daemon is not app:
            raise SetupError("this DaebusHttp is already attached to another app")
        self.daemon = app
        self.logger = logging.getLogger(f"daebus.{app.name}.http")
        app.http = self

    def refresh_handlers(self, app: Daebus) -> None:
        """Serve the routes added to ``app.routes`` since the last call.

        Raises SetupError for a route whose handler cannot be called as
        ``handler(req, **params)``; that route is left out, the others are served.
        """
        if app is self.daemon:
            self._take_routes()

    def _take_routes(self) -> None:
        app = self.daemon
        if app is None:
            return
        routes = app.routes
        taken = self._taken
        dispatcher = self._dispatcher
        if taken > len(routes) or (taken and routes[taken - 1] is not self._last_taken):
            dispatcher.table, taken = RouteTable(), 0  # app.routes was changed by hand
        failures: list[SetupError] = []
        for path, methods, func in routes[taken:]:
            try:
                dispatcher.table.add(path, methods, func)
            except SetupError as exc:
                failures.append(exc)
        self._taken = len(routes)
        self._last_taken = routes[-1] if routes else None
        for failure in failures[1:]:
            self.logger.error("route not served: %s", failure)
        if failures:
            raise failures[0]

    async def start_async(self, app: Daebus) -> None:
        """Listen; raises ``OSError`` with a clear message if the address is taken."""
        self.refresh_handlers(app)
        dispatcher = self._dispatcher
        mounts: dict[str, MountHandler] = {}
        providers: list[Component] = []
        for component in app.components:
            if component is not self and isinstance(component, MountProvider):
                provided = component.http_mounts(app)
                for path, handler in provided:
                    mounts[_mount_path(path)] = handler
                if provided:
                    providers.append(component)
        if self.health:
            mounts.update(health_mounts(app))
        for path in mounts:
            # A mount answers GET and HEAD before the routes: a route there is not served.
            if dispatcher.table.match(path, "GET")[0] is not None:
                self.logger.warning(
                    "route GET %s is not served: daebus serves its metrics or health there", path
                )
        dispatcher.component_mounts = mounts
        self._mount_providers = providers
        # One throttle for the run's log lines about clients: counted until the stop.
        throttle = LogThrottle(self.logger, asyncio.get_running_loop(), REFUSED_LOG_EVERY)
        web_app = web.Application(client_max_size=self.max_body_size)
        web_app.router.add_route(
            "*", "/{tail:.*}", dispatcher.handle, expect_handler=dispatcher.expect
        )
        runner = web.AppRunner(
            web_app,
            handle_signals=False,
            access_log=logging.getLogger("daebus.http.access") if self.access_log else None,
            keepalive_timeout=self.keepalive_timeout,
            logger=ServerLog(self.logger, throttle),
            # How long the unread rest of a refused body is drained before closing.
            lingering_time=min(self.read_timeout, 5.0),
            shutdown_timeout=_CLOSE_TIMEOUT,
        )
        await runner.setup()
        pool = WorkerPool(
            asyncio.get_running_loop(),
            self.max_workers or app.max_workers,
            f"daebus_{app.service or app.name}_http",
        )
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as exc:
            pool.shutdown(wait=False)
            await runner.cleanup()
            raise OSError(
                exc.errno,
                f"DaebusHttp cannot listen on {self.host}:{self.port}: {exc.strerror or exc} "
                "(is another program using this port? choose another with "
                "DaebusHttp(port=...))",
            ) from exc
        dispatcher.open(pool, throttle)
        dispatcher.tracing = app.tracing
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        scope = (
            "all interfaces: other machines can connect"
            if self.host in ("0.0.0.0", "::", "")
            else "this address only"
        )
        self.logger.info(
            "HTTP listening on %s:%d (%s); %d route(s)",
            self.host,
            self.port,
            scope,
            len(dispatcher.table),
        )

    async def stop_async(self) -> None:
        """Stop listening; requests in progress get ``shutdown_timeout`` to finish."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        timeout = self.shutdown_timeout
        if timeout is None:
            timeout = self.daemon.shutdown_timeout if self.daemon is not None else 10.0
        for site in list(runner.sites):
            await site.stop()
        if runner.server is not None:
            runner.server.pre_shutdown()  # idle connections close now, busy ones after
        # Components served on our port (WebSockets under a path) close their
        # long-lived connections first, whatever the order they were attached in:
        # otherwise they would hold the wait below for its whole timeout.
        providers, self._mount_providers = self._mount_providers, []
        for provider in providers:
            try:
                await provider.stop_async()
            except Exception:
                self.logger.exception("stopping %r failed", provider)
        await self._dispatcher.finish(timeout)
        await runner.cleanup()
        self._dispatcher.close()
        self.logger.info("HTTP server on port %d stopped", self.port)

    # -- registration ------------------------------------------------------------------
    def route(self, path: str, methods: list[str] | None = None) -> Callable[[Any], Any]:
        """Register a route on the attached app (same as ``app.route``)."""
        app = self._require_app()

        def decorator(func: Any) -> Any:
            app.add_route(path, methods, func)
            return func

        return decorator

    def configure_cors(self, config: Mapping[str, Any]) -> None:
        """Set the CORS rules (see :class:`~daebus.http.CorsPolicy`)."""
        self.cors_config = dict(config)
        self._dispatcher.cors = CorsPolicy(config)

    def mount(self, path: str, handler: MountHandler) -> None:
        """Serve ``GET path`` (and HEAD) with a raw aiohttp handler (a WebSocket endpoint, say).

        Mounted paths are matched before the routes, by exact path.
        """
        self._dispatcher.mounts[_mount_path(path)] = handler

    def static(
        self, prefix: str, directory: str | Path, *, index: str | None = "index.html"
    ) -> None:
        """Serve the files under ``directory`` at ``prefix`` (GET and HEAD; 405 otherwise).

        Routes win over files. A request for a folder gets its ``index`` file. Nothing
        outside ``directory`` is served (``..`` and symbolic links out of it are
        refused), nor any file or folder whose name starts with a dot (``.env``,
        ``.git/``).
        """
        folder = Path(directory).resolve()
        if not folder.is_dir():
            raise SetupError(f"static: {str(directory)!r} is not a directory")
        self._dispatcher.statics.append(StaticFolder("/" + prefix.strip("/"), folder, index))

    def _require_app(self) -> Daebus:
        if self.daemon is None:
            raise SetupError("DaebusHttp is not attached to an app; call app.attach(http) first")
        return self.daemon


def _mount_path(path: str) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise SetupError(f"a mount path must start with '/', got {path!r}")
    return path


if TYPE_CHECKING:  # mypy checks that DaebusHttp keeps to the protocol the app drives
    _component: type[Component] = DaebusHttp
