"""Answering one HTTP request: mounts, routes, static folders, CORS, and the handler call.

Each :class:`~daebus.DaebusHttp` has one :class:`Dispatcher`, which holds what it serves
and answers every request its aiohttp server receives. A route handler is called
through the :class:`~daebus.runtime.invoke.Invoker`, as every handler is, with
``request`` / ``response`` bound: ``async def`` ones on the loop, plain ``def`` ones in
the component's own worker threads, at most ``max_concurrent`` at once. At stop,
:meth:`Dispatcher.finish` waits for the requests in progress, then answers or cancels
those still running, so that a stop takes a bounded time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11

from .. import context
from .._compat import timeout as deadline
from .._routes import RouteTable, allow_header, canonical_path
from ..exceptions import SetupError
from ..runtime.invoke import HandlerExitError, Invoker
from ..runtime.throttle import LogThrottle
from ..runtime.workers import WorkerPool
from ._cors import CorsPolicy, foreign_origin, is_cross_origin
from ._log import brief
from ._messages import (
    BadStatusError,
    BodyError,
    HttpResponse,
    json_response,
    make_response,
    read_request,
    too_large,
)
from ._static import StaticFolder, serve_static

if TYPE_CHECKING:
    from ..runtime.metrics import Recorder
    from ..tracing import Tracing
    from ._component import DaebusHttp

__all__ = ["REFUSED_LOG_EVERY", "Dispatcher", "MountHandler"]

T = TypeVar("T")

#: A raw aiohttp handler, as given to :meth:`DaebusHttp.mount`.
MountHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Seconds between two log lines about one kind of refused request (past
#: ``max_concurrent``, malformed, cross-origin): a client must not be able to flood the log.
REFUSED_LOG_EVERY = 10.0


class _AbandonedError(Exception):
    """Set on the future of a ``def`` handler still running when the stop wait is over."""


class _Workers:
    """The component's worker pool, keeping each job's future with its request's task.

    :meth:`Dispatcher.finish` answers 503 to the requests whose ``def`` handler is
    still running through these futures, and leaves those tasks alone.
    """

    def __init__(
        self, pool: WorkerPool, running: dict[asyncio.Future[Any], asyncio.Task[Any] | None]
    ) -> None:
        self.pool = pool
        self.running = running

    def run(self, func: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``func(*args)`` in a worker, as ``WorkerPool.run`` does; call on the loop."""
        future = self.pool.run(func, *args)
        self.running[future] = asyncio.current_task()
        future.add_done_callback(self.running.pop)
        return future


class _NoParts:
    """Where the Invoker sends a generator route's parts: HTTP answers once, so a part fails."""

    def send(self, payload: Any, final: bool = True) -> Any:
        raise TypeError("an HTTP route answers once: return the answer, do not yield parts")


_NO_PARTS = _NoParts()


class Dispatcher:
    """What a :class:`~daebus.DaebusHttp` serves, and how it answers each request.

    The limits (``max_concurrent``, ``max_body_size``, ``read_timeout``), ``debug`` and
    ``logger`` are read from the component at each request, so changing them on the
    component takes effect at once.
    """

    def __init__(self, component: DaebusHttp) -> None:
        self.component = component
        #: The routes taken from ``app.routes``; replaced whole when they are rebuilt.
        self.table = RouteTable()
        self.cors: CorsPolicy | None = None
        #: The app's tracing during a run (see DaebusHttp.start_async); None: off.
        self.tracing: Tracing | None = None
        #: ``DaebusHttp.mount``'s paths, then those other components provide (each run).
        self.mounts: dict[str, MountHandler] = {}
        self.component_mounts: dict[str, MountHandler] = {}
        self.statics: list[StaticFolder] = []
        self._pool: WorkerPool | None = None
        self._invoker: Invoker | None = None
        #: 503s past max_concurrent, 403s to other origins (and the server's malformed
        #: requests): one line a period for each, then a count.
        self.throttle: LogThrottle | None = None
        self._busy = 0  # route handlers in progress (max_concurrent)
        self._active: set[asyncio.Task[Any]] = set()  # requests in progress
        self._in_workers: dict[asyncio.Future[Any], asyncio.Task[Any] | None] = {}
        self._drained: asyncio.Event | None = None  # set while stopping
        #: The service's metrics recorder while they are on (set by :meth:`open`).
        self.metrics: Recorder | None = None

    # -- a run -------------------------------------------------------------------------
    def open(self, pool: WorkerPool, throttle: LogThrottle) -> None:
        """Start a run (on its loop): plain ``def`` handlers go to ``pool``'s threads."""
        self._pool = pool
        self._invoker = Invoker(asyncio.get_running_loop(), _Workers(pool, self._in_workers))
        self.throttle = throttle
        self._drained = None
        app = self.component.app
        runtime = app._runtime if app is not None else None
        self.metrics = runtime.metrics if runtime is not None else None

    async def finish(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the requests in progress, then give up on the rest.

        A ``def`` handler's thread cannot be stopped: its request gets a 503 now and the
        thread finishes on its own. Any other request still running is cancelled.
        """
        if self._active:
            self._drained = asyncio.Event()
            self.component.logger.info(
                "waiting for %d HTTP request(s) to finish", len(self._active)
            )
            with contextlib.suppress(asyncio.TimeoutError):
                async with deadline(max(0.0, timeout)):
                    await self._drained.wait()
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
            self.component.logger.warning(
                "HTTP requests still in progress after %.1fs: %d answered 503, %d cancelled",
                timeout,
                abandoned,
                len(cancelled),
            )

    def close(self) -> None:
        """End the run: let the worker threads go (once the connections are closed).

        The log lines held back are counted now: the run's throttle will not be asked again.
        """
        pool, self._pool = self._pool, None
        self._invoker = None
        self.metrics = None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        throttle, self.throttle = self.throttle, None
        if throttle is not None:
            throttle.flush()

    # -- answering ---------------------------------------------------------------------
    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """Answer ``Expect: 100-continue``, or refuse a body announced as too large."""
        # Refuse a body the Content-Length already says is too large before the client
        # is told to send it (aiohttp's default answers 100 Continue to anything).
        max_body_size = self.component.max_body_size
        length = request.content_length
        if length is not None and length > max_body_size:
            response = json_response(too_large(max_body_size), 413)
            response.force_close()
            return response
        expect = request.headers.get(hdrs.EXPECT, "")
        if expect.lower() != "100-continue":
            return json_response({"error": f"Expectation Failed: {expect!r}"}, 417)
        if request.version == HttpVersion11:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the body's size is what the access log counts
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp handler of every request."""
        task = asyncio.current_task()
        assert task is not None
        active = self._active
        active.add(task)
        metrics = self.metrics
        started = metrics.clock() if metrics is not None else 0.0
        status = 500  # unless it is answered
        try:
            response = await self._dispatch(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            active.discard(task)
            if not active and self._drained is not None:
                self._drained.set()
            if metrics is not None:
                metrics.http_request(request.method, self.template(request), status, started)

    def template(self, request: web.Request) -> str:
        """What a request is counted under: its route's template, mount or static prefix."""
        path = request.path
        if path in self.mounts or path in self.component_mounts:
            return path
        found = self.table.template(canonical_path(request.rel_url.raw_path))
        if found is not None:
            return found
        for folder in self.statics:
            if path == folder.prefix or path.startswith(folder.prefix.rstrip("/") + "/"):
                return folder.prefix
        return "<unknown>"  # as daebus.runtime.metrics.UNKNOWN: what nothing serves

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        method = request.method.upper()
        mount = self.mounts.get(request.path) or self.component_mounts.get(request.path)
        if mount is not None and method in ("GET", "HEAD"):
            return await mount(request)
        func, params, allowed = self.table.match(canonical_path(request.rel_url.raw_path), method)
        if mount is not None:
            allowed.add("GET")
        cors = self.cors
        response: web.StreamResponse
        if func is not None:
            origin = None
            if not is_cross_origin(func):
                origin = foreign_origin(request, cors)
            if origin is None:
                response = await self._call(request, func, params)
            else:
                response = self._refuse_origin(request, origin)
        elif allowed:
            response = self._other_method(request, method, allowed)
        elif self.statics:
            response = await serve_static(self.statics, request, method, cors)
        else:
            response = json_response({"error": "Not Found", "path": request.path}, 404)
        if cors is not None and (func is not None or not cors.is_preflight(request)):
            cors.apply(request, response)  # a preflight answer has its own headers
        return response

    def _refuse_origin(self, request: web.Request, origin: str) -> web.StreamResponse:
        self._log(
            "foreign origin",
            "refused %s %s from origin %s with 403: neither the server's own origin nor "
            "allowed by cors_config",
            brief(request.method),
            brief(request.path),
            brief(origin),
        )
        return json_response({"error": "Forbidden: cross-origin request"}, 403)

    def _log(self, kind: str, msg: str, *args: Any) -> None:
        """A warning about a refused request: one of ``kind`` a period, then a count."""
        if self.throttle is not None:
            self.throttle.log(logging.WARNING, kind, msg, *args, logger=self.component.logger)

    def _other_method(
        self, request: web.Request, method: str, allowed: set[str]
    ) -> web.StreamResponse:
        """The answer to a method the path does not take: OPTIONS (and CORS), or 405."""
        if method == "OPTIONS":
            if self.cors is not None and self.cors.is_preflight(request):
                return self.cors.preflight(request, allowed)
            return web.Response(status=204, headers={"Allow": allow_header(allowed)})
        return json_response(
            {"error": "Method Not Allowed", "path": request.path, "method": method},
            405,
            headers={"Allow": allow_header(allowed)},
        )

    # -- calling the route handler -----------------------------------------------------
    async def _call(
        self, request: web.Request, func: Callable[..., Any], params: dict[str, Any]
    ) -> web.StreamResponse:
        max_concurrent = self.component.max_concurrent
        if self._busy >= max_concurrent:
            self._log(
                "busy",
                "HTTP request answered 503: max_concurrent=%d requests in progress",
                max_concurrent,
            )
            return json_response(
                {"error": "Service Unavailable: too many requests in progress"},
                503,
                headers={"Retry-After": "1"},
            )
        self._busy += 1
        try:
            if self.tracing is not None:
                return await self._traced_call(self.tracing, request, func, params)
            return await self._call_handler(request, func, params)
        finally:
            self._busy -= 1

    async def _traced_call(
        self,
        tracing: Tracing,
        request: web.Request,
        func: Callable[..., Any],
        params: dict[str, Any],
    ) -> web.StreamResponse:
        """:meth:`_call_handler` in a SERVER span, in the trace the request's headers name."""
        method = request.method.upper()
        route = self.table.template(canonical_path(request.rel_url.raw_path))
        traced = tracing.http(method, route or "(unknown route)", request.path, request.headers)
        try:
            response = await self._call_handler(request, func, params)
        except web.HTTPException as exc:  # aiohttp's way of answering (redirects, ...)
            traced.http_status(exc.status)
            raise
        except BaseException as exc:
            traced.failed(exc)
            raise
        else:
            traced.http_status(response.status)
            return response
        finally:
            traced.close()

    async def _call_handler(
        self, request: web.Request, func: Callable[..., Any], params: dict[str, Any]
    ) -> web.StreamResponse:
        component = self.component
        logger = component.logger
        try:
            req = await read_request(
                request,
                params,
                max_body_size=component.max_body_size,
                read_timeout=component.read_timeout,
                logger=logger,
            )
        except BodyError as exc:
            response = json_response(exc.body, exc.status)
            if exc.status in (408, 413):
                response.force_close()
            return response
        resp = HttpResponse()
        app = component.app
        if app is None:
            raise SetupError("DaebusHttp is not attached to an app; call app.attach(http) first")
        ctx = context.MessageContext(app, "http", req, resp)
        try:
            invoker = self._invoker
            if invoker is None:
                raise RuntimeError("DaebusHttp is not running")
            result = await invoker.invoke(func, ctx, (req,), _NO_PARTS, kwargs=params)
            return make_response(result, resp)
        except web.HTTPException:
            raise  # aiohttp's own way of answering (redirects, ...)
        except _AbandonedError:
            logger.warning(
                "HTTP %s %s: the handler %s was still running at shutdown; answered 503",
                request.method,
                request.path,
                _name(func),
            )
            response = json_response({"error": "Service Unavailable: stopping"}, 503)
            response.force_close()
            return response
        except BadStatusError as exc:
            logger.error(
                "HTTP %s %s: the handler %s answered with a bad status: %s",
                request.method,
                request.path,
                _name(func),
                exc,
            )
            return self._server_error(exc)
        except HandlerExitError as exc:  # SystemExit and the like: logged as what they are
            return self._failed(request, func, exc.args[0])
        except Exception as exc:
            return self._failed(request, func, exc)
        finally:
            for upload in req.files.values():
                upload.file.close()

    def _failed(
        self, request: web.Request, func: Callable[..., Any], exc: BaseException
    ) -> web.Response:
        if self.tracing is not None:
            self.tracing.failed(exc)
        self.component.logger.error(
            "HTTP %s %s: the handler %s failed",
            request.method,
            request.path,
            _name(func),
            exc_info=exc,
        )
        return self._server_error(exc)

    def _debug(self) -> bool:
        debug = self.component.debug
        if debug is not None:
            return debug
        app = self.component.app
        return bool(app is not None and app.debug)

    def _server_error(self, exc: BaseException) -> web.Response:
        body: dict[str, Any] = {"error": "Internal Server Error"}
        if self._debug():
            body["details"] = f"{type(exc).__name__}: {exc}"
        return json_response(body, 500)


def _name(func: Any) -> str:
    return str(getattr(func, "__qualname__", None) or func)
