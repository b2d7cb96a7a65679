"""HTTP endpoints: :class:`DaebusHttp` serves the app's routes with aiohttp on its event loop.

Routes come from ``app.routes`` (``@app.route``, ``Blueprint.route``, ``http.route``),
whenever they were registered. ``async def`` handlers run on the service's loop, plain
``def`` handlers in its worker pool, each with ``request`` / ``response`` bound to an
:class:`HttpRequest` and an :class:`HttpResponse`::

    http = DaebusHttp(port=8080)
    app.attach(http)

    @app.route("/users/<int:user_id>", methods=["GET", "DELETE"])
    def user(req, user_id):
        return {"id": user_id, "method": req.method}

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
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from . import context, encoding
from ._http_routing import CorsPolicy, RouteTable, allow_header, canonical_path
from ._runtime import is_async_callable
from .exceptions import SetupError

if TYPE_CHECKING:
    from .app import Daebus

__all__ = ["CorsPolicy", "DaebusHttp", "HttpRequest", "HttpResponse"]

log = logging.getLogger(__name__)

#: A raw aiohttp handler, as given to :meth:`DaebusHttp.mount`.
MountHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_JSON = "application/json"


# -- the request and response objects ---------------------------------------------------


class HttpRequest:
    """One HTTP request, as route handlers (and the ``request`` proxy) see it.

    Attributes:
        payload: the request's data. The JSON body if the request has one (any JSON
            value, ``{}`` and ``[]`` included); else the fields of a form body
            (urlencoded or multipart, files excepted); else the query string. Values from
            a form or query are strings; for a repeated key the last value is kept (use
            ``query`` / ``form`` for all of them); blank values are kept. When the payload
            is a dict, path parameters are added to it under their names unless the
            body or query already has that key.
        method, path: the request method (upper case) and the percent-decoded path.
        headers: the request headers, a case-insensitive multi-dict.
        params: the path parameters (converted: ``<int:id>`` gives an int), plus the
            query values whose names are not path parameters.
        query: the query string as a multi-dict (``query.getall(key)``), for every method.
        form: the text fields of a form body (a multi-dict; empty otherwise).
        files: the uploaded files of a multipart body: name -> ``aiohttp.web.FileField``
            (``.filename``, ``.content_type``, ``.file``); the files are closed once
            the handler returns.
        json: the decoded JSON body, or None.
        body: the raw body bytes (empty for multipart bodies, which are parsed as they
            arrive); ``text`` decodes it.
        raw: everything above as a dict (0.0.31's attribute).
        request_id: ``"http-<hex>"``, unique per request. ``reply_to`` is None and
            ``service`` is ``"http"`` (0.0.31's values).
        web_request: the underlying ``aiohttp.web.Request`` (cookies, remote address...),
            None for a request built by hand.
    """

    reply_to: Any = None
    service = "http"

    def __init__(self, raw: Mapping[str, Any] | None = None) -> None:
        raw = dict(raw or {})
        self.raw: dict[str, Any] = raw
        self.method: str = str(raw.get("method") or "GET").upper()
        self.path: str = str(raw.get("path") or "/")
        self.headers: CIMultiDictProxy[str] = _ci_proxy(raw.get("headers"))
        self.query: MultiDictProxy[str] = _proxy(raw.get("query"))
        self.form: MultiDictProxy[Any] = _proxy(raw.get("form"))
        self.files: MultiDictProxy[Any] = _proxy(raw.get("files"))
        self.body: bytes = bytes(raw.get("body") or b"")
        self.json: Any = raw.get("json")
        path_params = dict(raw.get("params") or {})
        self.params: dict[str, Any] = {**dict(self.query.items()), **path_params}
        payload: Any
        if "json" in raw:
            payload = raw["json"]
        elif "form" in raw:
            payload = {k: v for k, v in self.form.items() if isinstance(v, str)}
        else:
            payload = dict(self.query.items())
        if isinstance(payload, dict):
            for name, value in path_params.items():
                payload.setdefault(name, value)
        self.payload: Any = payload
        self.request_id: str = raw.get("request_id") or f"http-{uuid.uuid4().hex}"
        self.web_request: web.Request | None = None

    @property
    def text(self) -> str:
        """The body decoded with the request's charset (UTF-8 by default)."""
        charset = self.web_request.charset if self.web_request is not None else None
        return self.body.decode(charset or "utf-8", "replace")

    @property
    def cookies(self) -> Mapping[str, str]:
        """The request's cookies."""
        return self.web_request.cookies if self.web_request is not None else {}

    @property
    def remote(self) -> str | None:
        """The client's address (no proxy headers are trusted)."""
        return self.web_request.remote if self.web_request is not None else None

    def __repr__(self) -> str:
        return f"<HttpRequest {self.method} {self.path} {self.request_id}>"


class HttpResponse:
    """What a route handler answers with, through ``response.send`` / ``response.error``.

    A recorded ``send`` / ``error`` is the response, whatever the handler returns
    (as in 0.0.31). ``set_status`` and ``headers`` apply to returned values too.
    """

    def __init__(self, handler: Any = None) -> None:
        self.handler = handler
        self.data: Any = None
        self.status_code: int = 200
        self.headers: CIMultiDict[str] = CIMultiDict()
        #: True once ``send``, ``success`` or ``error`` recorded a response.
        self.sent = False
        self._status_set = False

    def send(self, data: Any, status_code: int | None = None) -> tuple[Any, int]:
        """Record ``data`` (sent as JSON) with ``status_code``; returns ``(data, status)``."""
        if status_code is None:
            status_code = self.status_code
        self.data, self.status_code, self.sent = data, int(status_code), True
        return data, self.status_code

    def success(
        self, data: Any, status_code: int | None = None, **_ignored: Any
    ) -> tuple[Any, int]:
        """Alias of :meth:`send`."""
        return self.send(data, status_code)

    def progress(self, data: Any, progress_percentage: float | None = None) -> tuple[Any, int]:
        """Record ``data`` like :meth:`send` (HTTP cannot stream progress), with the percentage."""
        if progress_percentage is not None:
            percentage = max(0.0, min(100.0, float(progress_percentage)))
            if isinstance(data, dict):
                data = {**data, "progress_percentage": percentage}
            else:
                data = {"data": data, "progress_percentage": percentage}
        return self.send(data)

    def error(self, err: Any, status_code: int | None = None) -> tuple[Any, int]:
        """Record ``{"status": "error", "error": str(err)}`` with ``status_code`` (400).

        Returns ``({"error": str(err)}, status)`` as 0.0.31 did; the body sent is the
        recorded one.
        """
        if status_code is None:
            status_code = self.status_code if self._status_set else 400
        message = str(err)
        self.send({"status": "error", "error": message}, status_code)
        return {"error": message}, self.status_code

    def set_status(self, status_code: int) -> HttpResponse:
        """Set the status of the response, whether it is sent or returned."""
        self.status_code = int(status_code)
        self._status_set = True
        return self

    def set_header(self, name: str, value: str) -> HttpResponse:
        """Set a response header."""
        self.headers[name] = value
        return self

    def get_response(self) -> tuple[Any, int]:
        """The recorded ``(data, status)``."""
        return self.data, self.status_code

    def __repr__(self) -> str:
        return f"<HttpResponse {self.status_code} sent={self.sent}>"


def _ci_proxy(value: Any) -> CIMultiDictProxy[str]:
    if isinstance(value, CIMultiDictProxy):
        return value
    return CIMultiDictProxy(CIMultiDict(value or {}))


def _proxy(value: Any) -> MultiDictProxy[Any]:
    if isinstance(value, MultiDictProxy):
        return value
    return MultiDictProxy(MultiDict(value or {}))


# -- the component --------------------------------------------------------------------------


class _BodyError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("error"))
        self.status = status
        self.body = body


@dataclass(frozen=True)
class _Static:
    prefix: str
    directory: Path
    index: str | None


class DaebusHttp:
    """Serve the app's HTTP routes on ``host:port`` with aiohttp, on the service's loop.

    Args:
        port: the TCP port; ``0`` picks a free one (read :attr:`port` once started).
        host: the address to listen on. The default ``"0.0.0.0"`` (all IPv4 interfaces,
            as in 0.0.31) lets other devices reach the service, which kiosk and IoT
            setups rely on; give ``"127.0.0.1"`` to accept local clients only. The
            address is logged at start.
        cors_config: cross-origin rules, see :class:`CorsPolicy`; None sends no CORS
            headers.
        max_body_size: largest request body in bytes (413 above it); 1 MiB by default.
        read_timeout: seconds a client has to send the whole body once the headers are
            in (408 after it), so a slow client cannot hold a request open.
        keepalive_timeout: seconds an idle keep-alive connection, or one that has not
            sent a complete request head, is kept open.
        debug: put the exception text of a failing handler in its 500 body. None (the
            default) follows ``app.run(debug=...)``.
        access_log: log every request to ``daebus.http.access``.

    Failing to listen (the port is taken) makes the service's start fail with an
    ``OSError`` saying so, instead of running without HTTP as 0.0.31 did.
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
        debug: bool | None = None,
        access_log: bool = False,
    ) -> None:
        self.port = port
        self.host = host
        self.max_body_size = max_body_size
        self.read_timeout = read_timeout
        self.keepalive_timeout = keepalive_timeout
        self.debug = debug
        self.access_log = access_log
        self.cors_config: dict[str, Any] | None = None
        self._cors: CorsPolicy | None = None
        if cors_config:
            self.configure_cors(cors_config)
        self.daemon: Daebus | None = None
        self.logger = log
        self._table = RouteTable(())
        self._mounts: dict[str, MountHandler] = {}
        self._component_mounts: dict[str, MountHandler] = {}
        self._statics: list[_Static] = []
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
    def routes(self) -> list[tuple[str, list[str], Callable[..., Any]]]:
        """The app's routes: ``(path, methods, handler)`` in registration order."""
        return list(self.daemon.routes) if self.daemon is not None else []

    # -- the component protocol ------------------------------------------------------
    def attach(self, app: Daebus) -> None:
        """Called by ``app.attach(http)``: sets ``app.http``."""
        if self.daemon is not None and self.daemon is not app:
            raise SetupError("this DaebusHttp is already attached to another app")
        self.daemon = app
        self.logger = logging.getLogger(f"daebus.{app.name}.http")
        app.http = self

    def refresh_handlers(self, app: Daebus) -> None:
        """Rebuild the route table from ``app.routes``; bad routes raise SetupError now."""
        self._table = RouteTable(list(app.routes))

    async def start_async(self, app: Daebus) -> None:
        """Listen; raises ``OSError`` with a clear message if the address is taken."""
        self.refresh_handlers(app)
        mounts: dict[str, MountHandler] = {}
        for component in list(getattr(app, "_components", ())):
            provide = getattr(component, "http_mounts", None)
            if component is not self and callable(provide):
                for path, handler in provide(app):
                    mounts[_mount_path(path)] = handler
        self._component_mounts = mounts
        web_app = web.Application(client_max_size=self.max_body_size)
        web_app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(
            web_app,
            handle_signals=False,
            access_log=logging.getLogger("daebus.http.access") if self.access_log else None,
            keepalive_timeout=self.keepalive_timeout,
            # How long the unread rest of a refused body is drained before closing.
            lingering_time=min(self.read_timeout, 5.0),
            shutdown_timeout=app.shutdown_timeout,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(
                exc.errno,
                f"DaebusHttp cannot listen on {self.host}:{self.port}: {exc.strerror or exc} "
                "(is another program using this port? choose another with "
                "DaebusHttp(port=...))",
            ) from exc
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        scope = (
            "all interfaces: other machines can connect"
            if self.host in ("0.0.0.0", "::", "")
            else "this address only"
        )
        log.info(
            "HTTP listening on %s:%d (%s); %d route(s)",
            self.host,
            self.port,
            scope,
            sum(len(route.handlers) for route in self._table.routes),
        )

    async def stop_async(self) -> None:
        """Stop listening; in-flight requests get the app's shutdown timeout to finish."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            log.info("HTTP server on port %d stopped", self.port)

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
        """Serve the files under ``directory`` at ``prefix`` (GET and HEAD).

        Routes win over files. A request for a folder gets its ``index`` file. Nothing
        outside ``directory`` is served (``..`` and symbolic links out of it are refused).
        """
        folder = Path(directory).resolve()
        if not folder.is_dir():
            raise SetupError(f"static: {str(directory)!r} is not a directory")
        self._statics.append(_Static("/" + prefix.strip("/"), folder, index))

    add_static = static

    def _require_app(self) -> Daebus:
        if self.daemon is None:
            raise SetupError("DaebusHttp is not attached to an app; call app.attach(http) first")
        return self.daemon

    # -- serving -----------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
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
            response = await self._call(request, func, params)
        elif not allowed:
            static = self._static_file(request.path) if method in ("GET", "HEAD") else None
            if static is not None:
                response = web.FileResponse(static)
            else:
                response = _json_response({"error": "Not Found", "path": request.path}, 404)
        elif method == "OPTIONS":
            if cors is not None and _is_preflight(request):
                return cors.preflight(request, allowed)
            response = web.Response(status=204, headers={"Allow": allow_header(allowed)})
        else:
            response = _json_response(
                {"error": "Method Not Allowed", "path": request.path, "method": method}, 405
            )
            response.headers["Allow"] = allow_header(allowed)
        if cors is not None:
            cors.apply(request, response)
        return response

    async def _call(
        self, request: web.Request, func: Callable[..., Any], params: dict[str, Any]
    ) -> web.StreamResponse:
        try:
            req = await self._read_request(request, params)
        except _BodyError as exc:
            response = _json_response(exc.body, exc.status)
            if exc.status in (408, 413):
                response.force_close()
            return response
        resp = HttpResponse()
        app = self._require_app()
        ctx = context.MessageContext(app, "http", req, resp)
        token = context.push(ctx)
        try:
            if is_async_callable(func):
                result = await func(req, **params)
            else:
                call = functools.partial(func, req, **params)
                copied = contextvars.copy_context()
                result = await app.thread_pool.run(copied.run, call)
            if inspect.isawaitable(result):
                result = await result
            return self._to_response(result, resp)
        except web.HTTPException:
            raise  # aiohttp's own way of answering (redirects, ...)
        except Exception as exc:
            log.exception(
                "HTTP %s %s: the handler %s failed", request.method, request.path, _name(func)
            )
            return self._server_error(exc)
        finally:
            context.pop(token)
            for upload in req.files.values():
                upload.file.close()

    async def _read_request(self, request: web.Request, params: dict[str, Any]) -> HttpRequest:
        raw: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "headers": request.headers,
            "params": params,
            "query": request.query,
        }
        if request.body_exists and request.can_read_body:
            length = request.content_length
            if length is not None and length > self.max_body_size:
                raise _BodyError(413, _too_large(self.max_body_size))
            try:
                await asyncio.wait_for(self._read_body(request, raw), self.read_timeout)
            except asyncio.TimeoutError:
                late = f"Request Timeout: the body did not arrive within {self.read_timeout}s"
                raise _BodyError(408, {"error": late}) from None
            except web.HTTPRequestEntityTooLarge:
                raise _BodyError(413, _too_large(self.max_body_size)) from None
            except (ValueError, web.HTTPBadRequest, web.RequestPayloadError) as exc:
                raise _BodyError(400, {"error": f"Malformed request body: {exc}"}) from None
        req = HttpRequest(raw)
        req.web_request = request
        return req

    async def _read_body(self, request: web.Request, raw: dict[str, Any]) -> None:
        declared = request.headers.get("Content-Type")
        ctype = request.content_type
        if ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
            fields = await request.post()
            raw["form"] = MultiDict((k, v) for k, v in fields.items() if not _is_file(v))
            raw["files"] = MultiDict((k, v) for k, v in fields.items() if _is_file(v))
            if ctype != "multipart/form-data":
                raw["body"] = await request.read()
            return
        body = raw["body"] = await request.read()
        if not body:
            return
        if ctype == _JSON or ctype.endswith("+json"):
            try:
                raw["json"] = encoding.loads(body)
            except ValueError as exc:
                raise _BodyError(400, {"error": f"Malformed JSON body: {exc}"}) from None
        elif declared is None or ctype == "text/plain":
            # Browsers' fetch() sends a JSON string body as text/plain unless told
            # otherwise: take JSON when it is JSON, the raw body otherwise.
            with contextlib.suppress(ValueError):
                raw["json"] = encoding.loads(body)

    def _static_file(self, path: str) -> Path | None:
        for static in self._statics:
            base = static.prefix.rstrip("/")
            if path != static.prefix and not path.startswith(base + "/"):
                continue
            try:
                candidate = (static.directory / path[len(base) :].lstrip("/")).resolve()
            except (OSError, ValueError):
                continue
            if candidate != static.directory and static.directory not in candidate.parents:
                continue
            if candidate.is_dir() and static.index:
                candidate = candidate / static.index
            if candidate.is_file():
                return candidate
        return None

    def _debug(self) -> bool:
        if self.debug is not None:
            return self.debug
        return bool(self.daemon is not None and self.daemon.debug)

    def _server_error(self, exc: BaseException) -> web.Response:
        body: dict[str, Any] = {"error": "Internal Server Error"}
        if self._debug():
            body["details"] = f"{type(exc).__name__}: {exc}"
        return _json_response(body, 500)

    def _to_response(self, result: Any, resp: HttpResponse) -> web.StreamResponse:
        if isinstance(result, web.StreamResponse):
            return result
        extra: Any = None
        if resp.sent:
            data, status = resp.data, resp.status_code
        elif isinstance(result, tuple) and len(result) in (2, 3):
            data, status = result[0], result[1]
            extra = result[2] if len(result) == 3 else None
        else:
            data, status = result, resp.status_code
        status = int(status)
        if not 100 <= status <= 599:
            raise ValueError(f"a route handler answered with the HTTP status {status}")
        response = _body_response(data, status)
        response.headers.extend(resp.headers)
        if extra:
            items = extra.items() if isinstance(extra, Mapping) else extra
            for name, value in items:
                response.headers[name] = str(value)
        return response


def _body_response(data: Any, status: int) -> web.Response:
    if isinstance(data, str):
        return web.Response(text=data, status=status, content_type="text/html")
    if isinstance(data, bytes | bytearray | memoryview):
        return web.Response(
            body=bytes(data), status=status, content_type="application/octet-stream"
        )
    return web.Response(body=encoding.dumps(data), status=status, content_type=_JSON)


def _json_response(body: Any, status: int) -> web.Response:
    return web.Response(body=encoding.dumps(body), status=status, content_type=_JSON)


def _too_large(limit: int) -> dict[str, Any]:
    return {"error": f"Request Entity Too Large: the body is over {limit} bytes", "max_size": limit}


def _is_preflight(request: web.BaseRequest) -> bool:
    headers = request.headers
    return "Origin" in headers and "Access-Control-Request-Method" in headers


def _is_file(value: Any) -> bool:
    return isinstance(value, web.FileField)


def _mount_path(path: str) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise SetupError(f"a mount path must start with '/', got {path!r}")
    return path


def _name(func: Any) -> str:
    return str(getattr(func, "__qualname__", None) or func)
