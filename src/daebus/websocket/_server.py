"""Where a :class:`~daebus.DaebusWebSocket` listens, and starting and stopping its server.

The port rules are 0.0.31's, decided from what the HTTP component was *asked* for:
``DaebusHttp`` writes the port it bound back into ``http.port`` when it starts, so the
WebSocket side reads ``http.port`` before that (components start in attach order), or
remembers what it was when ``DaebusHttp`` asked for the mounts, just before binding.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, NamedTuple

from aiohttp import web

from .._compat import timeout as deadline
from ..exceptions import SetupError
from ._dispatch import CLOSE_GOING_AWAY, SocketDispatcher, frame

if TYPE_CHECKING:
    from ..app import Daebus
    from ._clients import ClientTable
    from ._component import DaebusWebSocket

__all__ = ["PortPlan", "SocketServer", "plan_port"]

log = logging.getLogger("daebus.websocket")

#: Seconds aiohttp gets to end the connections once every client was closed (or cut
#: off after ``close_timeout``): a safety net only.
_CLEANUP_TIMEOUT = 1.0


class PortPlan(NamedTuple):
    """Where the WebSocket endpoint is: ``port``, and whether it is on the HTTP port."""

    port: int | None
    mounted: bool = False
    moved: bool = False  # the HTTP port was asked for: moved to the next one


def plan_port(wanted: int | None, path: str | None, http_port: int | None) -> PortPlan:
    """The port rules, from the port asked for and the HTTP port (None: no HTTP).

    - no HTTP: ``wanted`` (None: the start fails);
    - ``path`` and no port, or the HTTP port itself: served by HTTP under ``path``;
    - no port: the HTTP port + 1 (0 stays 0: any free port);
    - the HTTP port without a path: the HTTP port + 1, with a warning (0.0.31's rule).
    """
    if http_port is None:
        return PortPlan(wanted)
    same = wanted == http_port and wanted != 0
    if path is not None and (wanted is None or same):
        return PortPlan(http_port, mounted=True)
    if wanted is None:
        return PortPlan(0 if http_port == 0 else http_port + 1)
    if same:
        return PortPlan(wanted + 1, moved=True)
    return PortPlan(wanted)


class SocketServer:
    """The listening side of a :class:`~daebus.DaebusWebSocket`.

    Either its own aiohttp server, or nothing of its own when ``DaebusHttp`` serves the
    endpoint under a path (see :meth:`DaebusWebSocket.http_mounts`). Either way every
    connection starts at :meth:`handle`.
    """

    def __init__(self, component: DaebusWebSocket, table: ClientTable) -> None:
        self.component = component
        self.table = table
        self.runner: web.ServerRunner | None = None
        self.site: web.TCPSite | None = None
        self.bound_port: int | None = None
        self.accepting = False
        #: Serves the connections while running.
        self.dispatcher: SocketDispatcher | None = None
        #: ``http.port`` when DaebusHttp asked for the mounts, before it bound (this run).
        self.http_asked: int | None = None
        #: The plan of the current run (None when stopped).
        self.running: PortPlan | None = None
        self._warned_for: tuple[int | None, int | None] | None = None

    # -- the port ----------------------------------------------------------------------
    def _live_http_port(self) -> int | None:
        app = self.component.daemon
        http = app.http if app is not None else None
        port = getattr(http, "port", None) if http is not None else None
        return port if isinstance(port, int) else None

    def http_port(self) -> int | None:
        """The port the HTTP component was asked for (None without one)."""
        if self.http_asked is not None:
            return self.http_asked
        return self._live_http_port()

    def plan(self, *, warn: bool = False) -> PortPlan:
        """Where the endpoint is (fixed while running; warns once if it moved up)."""
        if self.running is not None:
            return self.running
        component = self.component
        wanted, http_port = component.requested_port, self.http_port()
        plan = plan_port(wanted, component.path, http_port)
        if warn and plan.moved and self._warned_for != (wanted, http_port):
            self._warned_for = (wanted, http_port)
            log.warning("WebSocket port %s is the HTTP port; using %s instead", wanted, plan.port)
        return plan

    def remember_http_port(self) -> None:
        """Note the HTTP port now: DaebusHttp asks for the mounts just before binding."""
        if self.running is None:
            self.http_asked = self._live_http_port()

    def public_port(self) -> int | None:
        """The port clients connect to: the bound one once running."""
        if self.bound_port is not None:
            return self.bound_port
        plan = self.plan()
        if plan.mounted:
            live = self._live_http_port()  # the bound port once HTTP runs
            return live if live is not None else plan.port
        return plan.port

    # -- starting and stopping ---------------------------------------------------------
    async def start(self, app: Daebus) -> None:
        """Listen (or get ready to be served by HTTP), on the app's loop."""
        component = self.component
        runtime = app._runtime
        if runtime is None:
            raise SetupError("start_async() needs the app's runtime: start the app instead")
        plan = self.plan(warn=True)
        if plan.port is None:
            raise SetupError(
                "WebSocket port must be specified when DaebusHttp is not attached: "
                "DaebusWebSocket(port=...)"
            )
        self.table.bind(runtime.loop)
        self.dispatcher = SocketDispatcher(component, self.table, runtime, mounted=plan.mounted)
        self.running = plan
        if plan.mounted:
            self.accepting = True
            log.info("WebSocket endpoint at %s on the HTTP port %s", component.path, plan.port)
            return
        runner = web.ServerRunner(
            web.Server(self.handle, access_log=None), shutdown_timeout=_CLEANUP_TIMEOUT
        )
        await runner.setup()
        host = component.host
        site = web.TCPSite(runner, host, plan.port, ssl_context=component.ssl_context)
        self.accepting = True  # before listening: a first client must not get a 503
        try:
            await site.start()
        except OSError as exc:
            self.accepting = False
            self.running = None
            await runner.cleanup()
            self.table.unbind()
            self.dispatcher = None
            raise OSError(
                exc.errno,
                f"DaebusWebSocket cannot listen on {host}:{plan.port}: {exc.strerror or exc} "
                "(is another program using this port? choose another with "
                "DaebusWebSocket(port=...))",
            ) from exc
        self.runner, self.site = runner, site
        addresses = runner.addresses
        self.bound_port = int(addresses[0][1]) if addresses else plan.port
        scheme = "wss" if component.ssl_context is not None else "ws"
        log.info(
            "WebSocket server listening on %s://%s:%s%s",
            scheme,
            host,
            self.bound_port,
            component.path or "",
        )

    async def stop_listening(self) -> None:
        """Refuse new connections (the clients already connected stay)."""
        self.accepting = False
        site, self.site = self.site, None
        if site is not None:
            await site.stop()

    async def shut_down_gracefully(self, timeout: float, message: Any, skip: str | None) -> int:
        """Stop listening, send ``message`` to every client, close them all (1001).

        Waits up to ``timeout`` for the clients to go, except ``skip`` (the client whose
        handler asked: it cannot be gone before its handler returns). How many closed.
        """
        table = self.table
        await self.stop_listening()
        if message:
            if not isinstance(message, dict):
                message = {"message": str(message)}
            table.enqueue_all(frame("server_shutdown", message))
        count = await table.close_all(
            CLOSE_GOING_AWAY, "Server shutting down", timeout=timeout, skip=skip
        )
        log.info("WebSocket server shut down; %d client(s) disconnected", count)
        return count

    # -- serving -----------------------------------------------------------------------
    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """The aiohttp handler of every connection (also mounted on the HTTP port)."""
        dispatcher = self.dispatcher
        if dispatcher is None or not self.accepting:
            return web.Response(status=503, text="WebSocket server is not running\n")
        return await dispatcher.handle(request)

    async def stop(self) -> None:
        """Close every client (1001) and stop listening, in about ``close_timeout``."""
        self.accepting = False
        await self.table.shut_down(CLOSE_GOING_AWAY, "Server shutting down")
        runner, self.runner, self.site = self.runner, None, None
        if runner is not None:
            try:
                async with deadline(_CLEANUP_TIMEOUT + 1):
                    await runner.cleanup()
            except Exception as exc:
                log.warning("stopping the WebSocket server: %r", exc)
        self.table.unbind()
        self.dispatcher = None
        self.bound_port = None
        self.http_asked = None
        self.running = None
