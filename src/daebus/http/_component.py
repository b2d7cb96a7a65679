"""HTTP endpoints: :class:`DaebusHttp` serves the app's routes with aiohttp on its event loop.

Routes come from ``app.routes`` (``@app.route``, ``Blueprint.route``, ``http.route``),
whenever they were registered. ``async def`` handlers run on the service's loop, plain
``def`` handlers in the component's own worker threads, each with ``request`` /
``response`` bound to an :class:`HttpRequest` and an :class:`HttpResponse`::

    http = DaebusHttp(port=8080)
    app.attach(http)

    @app.route("/users/<int:user_id>", methods=["GET", "DELETE"])
    def user(req, user_id):
        return {"id": user_id, "method": req.method}

What a handler returns is sent as JSON, strings and bytes included (as in 0.0.31); to
send HTML or anything else, return an ``aiohttp.web.Response``.

A browser page of another origin may not POST (PUT, DELETE, ...) to a route: such a
request gets 403 before the handler runs, unless ``cors_config`` allows the origin or
the handler is marked :func:`cross_origin`.

aiohttp does the HTTP/1.1 work (keep-alive, Content-Length, chunked bodies, HEAD); this
module does the routing, so that routes can be added while the service runs and 404,
405, OPTIONS and CORS answer the same way for every route.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11

from . import context
from ._compat import timeout as deadline
from ._http_cors import CorsPolicy, foreign_origin
from ._http_log import ServerLog, Throttle, brief
from ._http_messages import (
    BadStatusError,
    BodyError,
    HttpRequest,
    HttpResponse,
    json_response,
    make_response,
    read_request,
    too_large,
)
from ._http_static import StaticFolder, serve_static
from ._routes import RouteTable, allow_header, canonical_path
from ._runtime import is_async_callable
from ._workers import WorkerPool
from .exceptions import SetupError

if TYPE_CHECKING:
    from .app import Daebus

__all__ = ["CorsPolicy", "DaebusHttp", "HttpRequest", "HttpResponse", "cross_origin"]

log = logging.getLogger(__name__)

#: A raw aiohttp handler, as given to :meth:`DaebusHttp.mount`.
MountHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
F = TypeVar("F", bound=Callable[..., Any])

#: Seconds aiohttp gets to close the connections once our own shutdown wait is over:
#: by then every request has been answered or cancelled, so this is a safety net only.
_CLOSE_TIMEOUT = 1.0
#: Seconds between two log lines about one kind of refused request (past
#: ``max_concurrent``, malformed, cross-origin): a client must not be able to flood the log.
_REFUSED_LOG_EVERY = 10.0


def cross_origin(func: F) -> F:
    """Let browser pages of any origin POST (PUT, DELETE, ...) to this route handler.

    Without it, such a request from an origin that is neither the server's own nor
    allowed by ``cors_config`` gets 403 and the handler does not run: a page on another
    site could otherwise make a visitor's browser send it (a form, or ``fetch`` with a
    ``text/plain`` body needs no CORS preflight). Mark only handlers that are meant to
    be called that way (a public endpoint with its own authentication)::

        @app.route("/hook", methods=["POST"])
        @cross_origin
        def hook(req): ...

    The function is returned unchanged; the order of the two decorators does not matter.
    CORS still decides whether the page may read the answer.
    """
    try:
        func._daebus_cross_origin = True  # type: ignore[attr-defined]
    except AttributeError:  # a bound method: its function is what the route keeps
        raise SetupError(f"cross_origin cannot mark {func!r}; mark the function") from None
    return func


class _AbandonedError(Exception):
    """Set on the future of a ``def`` handler still running when the stop wait is over."""


class DaebusHttp:
    """Serve the app's HTTP routes on ``host:port`` with aiohttp, on the service's loop.

    Args:
        port: the TCP port; ``0`` picks a free one (read :attr:`port` once started).
        host: the address to listen on. The default ``"0.0.0.0"`` (all IPv4 interfaces,
            as in 0.0.31) lets other devices reach the service, which kiosk and IoT
            setups rely on; give ``"127.0.0.1"`` to accept local clients only. The
            address is logged at start.
        cors_config: cross-origin rules, see :class:`CorsPolicy`; None sends no CORS
            headers. Whatever it says, a POST (or any method but GET, HEAD and OPTIONS)
            from a browser page of another origin that it does not allow gets 403
            without running the route, unless the handler is marked
            :func:`cross_origin`. A page's own origin (the ``Host`` the request was sent
            to) and clients that send no ``Origin`` (not browsers) are always let through.
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
        self.cors_config: dict[str, Any] | None = None
        self._cors: CorsPolicy | None = None
        if cors_config:
            self.configure_cors(cors_config)
        self.daemon: Daebus | None = None
        #: ``daebus.<app name>.http`` once attached (0.0.31's attribute): what this
        #: component logs about requests and its server goes there.
        self.logger = log
        self._table = RouteTable()
        self._taken = 0  # how many entries of app.routes the table has taken
        self._last_taken: Any = None
        self._mounts: dict[str, MountHandler] = {}
        self._component_mounts: dict[str, MountHandler] = {}
        self._mount_providers: list[Any] = []
        self._statics: list[StaticFolder] = []
        self._runner: web.AppRunner | None = None
        self._pool: WorkerPool | None = None
        self._busy = 0  # route handlers in progress (max_concurrent)
        self._refused = Throttle(_REFUSED_LOG_EVERY)  # 503s past max_concurrent
        self._foreign = Throttle(_REFUSED_LOG_EVERY)  # 403s to other origins
        self._active: set[asyncio.Task[Any]] = set()  # requests in progress
        self._in_workers: dict[asyncio.Future[Any], asyncio.Task[Any] | None] = {}
        self._drained: asyncio.Event | None = None  # set while stopping

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
        return MappingProxyType(self._table.describe())

    # -- the component protocol ------------------------------------------------------
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
        if taken > len(routes) or (taken and routes[taken - 1] is not self._last_taken):
            self._table, taken = RouteTable(), 0  # app.routes was changed by hand
        failures: list[SetupError] = []
        for path, methods, func in routes[taken:]:
            try:
                self._table.add(path, methods, func)
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
        mounts: dict[str, MountHandler] = {}
        providers: list[Any] = []
        for component in list(getattr(app, "_components", ())):
            provide = getattr(component, "http_mounts", None)
            if component is not self and callable(provide):
                provided = provide(app)
                for path, handler in provided:
                    mounts[_mount_path(path)] = handler
                if provided:
                    providers.append(component)
        self._component_mounts = mounts
        self._mount_providers = providers
        web_app = web.Application(client_max_size=self.max_body_size)
        web_app.router.add_route("*", "/{tail:.*}", self._handle, expect_handler=self._expect)
        runner = web.AppRunner(
            web_app,
            handle_signals=False,
            access_log=logging.getLogger("daebus.http.access") if self.access_log else None,
            keepalive_timeout=self.keepalive_timeout,
            logger=ServerLog(self.logger, _REFUSED_LOG_EVERY),
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
        self._pool = pool
        self._drained = None
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
            len(self._table),
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
        if self._active:
            self._drained = asyncio.Event()
            self.logger.info("waiting for %d HTTP request(s) to finish", len(self._active))
            with contextlib.suppress(asyncio.TimeoutError):
                async with deadline(max(0.0, timeout)):
                    await self._drained.wait()
        self._abandon(timeout)
        await runner.cleanup()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        self.logger.info("HTTP server on port %d stopped", self.port)

    def _abandon(self, timeout: float) -> None:
        # A def handler's thread cannot be stopped: its request gets a 503 now and the
        # thread finishes on its own. Anything else still running is cancelled.
        in_workers: set[asyncio.Task[Any] | None] = set()
        abandoned = 0
        for future, task in list(self._in_workers.items()):
            in_workers.add(task)  # finishing (done) or answering 503: not to be cancelled
            if not future.done():
                future.set_exception(_AbandonedError())
                abandoned += 1
        cancelled = [task for task in list(self._active) if task not in in_workers]
        for task in cancelled:
            task.cancel()
        if abandoned or cancelled:
            self.logger.warning(
                "HTTP requests still in progress after %.1fs: %d answered 503, %d cancelled",
                timeout,
                abandoned,
                len(cancelled),
            )

    # -- registration ------------------------------------------------------------------
    def route(self, path: str, methods: list[str] | None = None) -> Callable[[Any], Any]:
        """Register a route on the attached app (same as ``app.route``)."""
        app = self._require_app()

        def decorator(func: Any) -> Any:
            app.add_route(path, methods, func)
            return func

        return decorator

    def configure_cors(self, config: Mapping[str, Any]) -> None:
        """Set the CORS rules (see :class:`CorsPolicy`)."""
        self.cors_config = dict(config)
        self._cors = CorsPolicy(config)

    def mount(self, path: str, handler: MountHandler) -> None:
        """Serve ``GET path`` (and HEAD) with a raw aiohttp handler (a WebSocket endpoint, say).

        Mounted paths are matched before the routes, by exact path.
        """
        self._mounts[_mount_path(path)] = handler

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
        self._statics.append(StaticFolder("/" + prefix.strip("/"), folder, index))

    def _require_app(self) -> Daebus:
        if self.daemon is None:
            raise SetupError("DaebusHttp is not attached to an app; call app.attach(http) first")
        return self.daemon

    # -- serving -----------------------------------------------------------------------
    async def _expect(self, request: web.Request) -> web.StreamResponse | None:
        # Refuse a body the Content-Length already says is too large before the client
        # is told to send it (aiohttp's default answers 100 Continue to anything).
        length = request.content_length
        if length is not None and length > self.max_body_size:
            response = json_response(too_large(self.max_body_size), 413)
            response.force_close()
            return response
        expect = request.headers.get(hdrs.EXPECT, "")
        if expect.lower() != "100-continue":
            return json_response({"error": f"Expectation Failed: {expect!r}"}, 417)
        if request.version == HttpVersion11:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the body's size is what the access log counts
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        active = self._active
        active.add(task)
        try:
            return await self._dispatch(request)
        finally:
            active.discard(task)
            if not active and self._drained is not None:
                self._drained.set()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        method = request.method.upper()
        mount = self._mounts.get(request.path) or self._component_mounts.get(request.path)
        if mount is not None and method in ("GET", "HEAD"):
            return await mount(request)
        func, params, allowed = self._table.match(canonical_path(request.rel_url.raw_path), method)
        if mount is not None:
            allowed.add("GET")
        cors = self._cors
        response: web.StreamResponse
        if func is not None:
            origin = None
            if not getattr(func, "_daebus_cross_origin", False):
                origin = foreign_origin(request, cors)
            if origin is None:
                response = await self._call(request, func, params)
            else:
                response = self._refuse_origin(request, origin)
        elif allowed:
            response = self._other_method(request, method, allowed)
        elif self._statics:
            response = await serve_static(self._statics, request, method, cors)
        else:
            response = json_response({"error": "Not Found", "path": request.path}, 404)
        if cors is not None and (func is not None or not cors.is_preflight(request)):
            cors.apply(request, response)  # a preflight answer has its own headers
        return response

    def _refuse_origin(self, request: web.Request, origin: str) -> web.StreamResponse:
        held = self._foreign.allow()
        if held is not None:
            self.logger.warning(
                "refused %s %s from origin %s with 403: neither the server's own origin nor "
                "allowed by cors_config%s",
                brief(request.method),
                brief(request.path),
                brief(origin),
                f" ({held} more since the last such line)" if held else "",
            )
        return json_response({"error": "Forbidden: cross-origin request"}, 403)

    def _other_method(
        self, request: web.Request, method: str, allowed: set[str]
    ) -> web.StreamResponse:
        """The answer to a method the path does not take: OPTIONS (and CORS), or 405."""
        if method == "OPTIONS":
            if self._cors is not None and self._cors.is_preflight(request):
                return self._cors.preflight(request, allowed)
            return web.Response(status=204, headers={"Allow": allow_header(allowed)})
        return json_response(
            {"error": "Method Not Allowed", "path": request.path, "method": method},
            405,
            headers={"Allow": allow_header(allowed)},
        )

    async def _call(
        self, request: web.Request, func: Callable[..., Any], params: dict[str, Any]
    ) -> web.StreamResponse:
        if self._busy >= self.max_concurrent:
            held = self._refused.allow()
            if held is not None:
                self.logger.warning(
                    "%d HTTP request(s) answered 503: max_concurrent=%d requests in progress",
                    held + 1,
                    self.max_concurrent,
                )
            return json_response(
                {"error": "Service Unavailable: too many requests in progress"},
                503,
                headers={"Retry-After": "1"},
            )
        self._busy += 1
        try:
            return await self._call_handler(request, func, params)
        finally:
            self._busy -= 1

    async def _call_handler(
        self, request: web.Request, func: Callable[..., Any], params: dict[str, Any]
    ) -> web.StreamResponse:
        try:
            req = await read_request(
                request,
                params,
                max_body_size=self.max_body_size,
                read_timeout=self.read_timeout,
                logger=self.logger,
            )
        except BodyError as exc:
            response = json_response(exc.body, exc.status)
            if exc.status in (408, 413):
                response.force_close()
            return response
        resp = HttpResponse()
        app = self._require_app()
        token = context.push(context.MessageContext(app, "http", req, resp))
        try:
            if is_async_callable(func):
                result = await func(req, **params)
            else:
                result = await self._in_worker(functools.partial(func, req, **params))
            if inspect.isawaitable(result):
                result = await result
            return make_response(result, resp)
        except web.HTTPException:
            raise  # aiohttp's own way of answering (redirects, ...)
        except _AbandonedError:
            self.logger.warning(
                "HTTP %s %s: the handler %s was still running at shutdown; answered 503",
                request.method,
                request.path,
                _name(func),
            )
            response = json_response({"error": "Service Unavailable: stopping"}, 503)
            response.force_close()
            return response
        except BadStatusError as exc:
            self.logger.error(
                "HTTP %s %s: the handler %s answered with a bad status: %s",
                request.method,
                request.path,
                _name(func),
                exc,
            )
            return self._server_error(exc)
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except BaseException as exc:
            # SystemExit and the like too: one handler must not stop the service.
            self.logger.error(
                "HTTP %s %s: the handler %s failed",
                request.method,
                request.path,
                _name(func),
                exc_info=exc,
            )
            return self._server_error(exc)
        finally:
            context.pop(token)
            for upload in req.files.values():
                upload.file.close()

    async def _in_worker(self, call: Callable[[], Any]) -> Any:
        pool = self._pool
        if pool is None:
            raise RuntimeError("DaebusHttp is not running")
        future = pool.run(contextvars.copy_context().run, call)
        waiting = self._in_workers
        waiting[future] = asyncio.current_task()
        try:
            return await future
        finally:
            del waiting[future]

    def _debug(self) -> bool:
        if self.debug is not None:
            return self.debug
        return bool(self.daemon is not None and self.daemon.debug)

    def _server_error(self, exc: BaseException) -> web.Response:
        body: dict[str, Any] = {"error": "Internal Server Error"}
        if self._debug():
            body["details"] = f"{type(exc).__name__}: {exc}"
        return json_response(body, 500)


def _mount_path(path: str) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise SetupError(f"a mount path must start with '/', got {path!r}")
    return path


def _name(func: Any) -> str:
    return str(getattr(func, "__qualname__", None) or func)
