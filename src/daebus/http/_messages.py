"""What an HTTP route handler sees and answers with: :class:`HttpRequest`, :class:`HttpResponse`.

Also the way between them and aiohttp: :func:`read_request` reads a request's body
(within the size and time limits) into an :class:`HttpRequest`, and
:func:`make_response` turns a handler's result into the response. Both classes are
importable from :mod:`daebus.http` and the package root.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from .. import encoding, protocol
from .._compat import timeout as deadline

if TYPE_CHECKING:
    from aiohttp.typedefs import LooseHeaders

__all__ = [
    "BodyError",
    "HttpRequest",
    "HttpResponse",
    "json_response",
    "make_response",
    "read_request",
]

JSON = "application/json"

#: Headers a response may carry several times; any other one set again is replaced.
MULTI_VALUED = frozenset({"set-cookie", "www-authenticate", "link"})


class HttpRequest:
    """One HTTP request, as route handlers (and the ``request`` proxy) see it.

    Attributes:
        payload: the request's data. The JSON body if the request has one (any JSON
            value, ``{}`` and ``[]`` included): a body declared ``application/json`` or
            ``*/*+json``, or a ``text/plain`` or untyped body that parses as JSON (what
            a browser's ``fetch()`` sends by default) when it comes from the server's
            own origin or without an ``Origin`` header (a cross-site page can send
            text/plain without a CORS preflight). Else the fields of a form body
            (urlencoded or multipart, files excepted); else the query string. Values from
            a form or query are strings; for a repeated key the last value is kept (use
            ``query`` / ``form`` for all of them); blank values are kept. When it is a
            dict, the path parameters are added to a copy of it and win over a body or
            query key of the same name (they are what the route matched); ``json``,
            ``form`` and ``query`` keep what the client sent. 0.0.31 did not add them
            (its guide said it did); ``params`` holds them alone.
        method, path: the request method (upper case) and the percent-decoded path.
        headers: the request headers, a case-insensitive multi-dict.
        params: the path parameters (converted: ``<int:id>`` gives an int), plus the
            query values whose names are not path parameters.
        query: the query string as a multi-dict (``query.getall(key)``), for every method.
        form: the text fields of a form body (a multi-dict; empty otherwise).
        files: the uploaded files of a multipart body: name -> ``aiohttp.web.FileField``
            (``.filename``, ``.content_type``, ``.file``); the files are closed once
            the handler returns.
        json: the decoded JSON body exactly as sent, or None.
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
            payload = self.json
        elif "form" in raw:
            payload = {k: v for k, v in self.form.items() if isinstance(v, str)}
        else:
            payload = dict(self.query.items())
        if isinstance(payload, dict) and path_params:
            payload = {**payload, **path_params}
        self.payload: Any = payload
        self.request_id: str = raw.get("request_id") or f"http-{uuid.uuid4().hex}"
        self.web_request: web.BaseRequest | None = None

    @property
    def text(self) -> str:
        """The body decoded with the request's charset (UTF-8 if none, or an unknown one)."""
        charset = self.web_request.charset if self.web_request is not None else None
        try:
            return self.body.decode(charset or "utf-8", "replace")
        except LookupError:
            return self.body.decode("utf-8", "replace")

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

    What is sent, first rule that applies:

    1. a returned ``aiohttp.web.Response`` (HTML, files, redirects...), as it is;
    2. a recorded ``send`` / ``success`` / ``error``: its data and status, whatever else
       the handler returns (as in 0.0.31);
    3. a returned ``(data, status)`` or ``(data, status, headers)`` (``status`` an int,
       ``headers`` a mapping); another tuple is JSON, a list;
    4. any other returned value, as JSON with the status of ``set_status`` (200).

    Everything but a ``web.Response`` goes out as JSON (a string or bytes too, as in
    0.0.31). Headers given to ``set_header`` are added in every case; tuple headers
    are applied after them and win.
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
        data = protocol.progress_payload(data, progress_percentage)
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
        """Set a response header, replacing an earlier value (``Set-Cookie`` adds one)."""
        if name.lower() in MULTI_VALUED:
            self.headers.add(name, value)
        else:
            self.headers[name] = value
        return self

    def get_response(self) -> tuple[Any, int]:
        """The recorded ``(data, status)``."""
        return self.data, self.status_code

    def __repr__(self) -> str:
        return f"<HttpResponse {self.status_code} sent={self.sent}>"


# -- reading a request ---------------------------------------------------------------


class BodyError(Exception):
    """The body cannot be taken: answer ``status`` with the JSON ``body``."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("error"))
        self.status = status
        self.body = body


async def read_request(
    request: web.Request,
    params: dict[str, Any],
    *,
    max_body_size: int,
    read_timeout: float,
    logger: logging.Logger,
) -> HttpRequest:
    """The :class:`HttpRequest` of ``request``, its body read and parsed.

    Raises:
        BodyError: 413 for a body over ``max_body_size``, 408 for one that did not
            arrive within ``read_timeout`` seconds, 400 for one that cannot be parsed.
    """
    raw: dict[str, Any] = {
        "method": request.method,
        "path": request.path,
        "headers": request.headers,
        "params": params,
        "query": request.query,
    }
    if request.body_exists and request.can_read_body:
        length = request.content_length
        if length is not None and length > max_body_size:
            raise BodyError(413, too_large(max_body_size))
        try:
            async with deadline(read_timeout):
                await _read_body(request, raw)
        except BodyError:
            raise
        except asyncio.TimeoutError:
            late = f"Request Timeout: the body did not arrive within {read_timeout}s"
            raise BodyError(408, {"error": late}) from None
        except web.HTTPRequestEntityTooLarge:
            raise BodyError(413, too_large(max_body_size)) from None
        except Exception as exc:
            # Whatever parsing the client's bytes raises (a broken multipart header, an
            # unknown charset, bad UTF-8...) is the client's mistake: a 400, no traceback.
            logger.warning(
                "HTTP %s %s: malformed body: %s: %s",
                request.method,
                request.path,
                type(exc).__name__,
                exc,
            )
            raise BodyError(400, {"error": f"Malformed request body: {exc}"}) from None
    req = HttpRequest(raw)
    req.web_request = request
    return req


async def _read_body(request: web.Request, raw: dict[str, Any]) -> None:
    declared = request.headers.get(hdrs.CONTENT_TYPE)
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
    if ctype == JSON or ctype.endswith("+json"):
        try:
            raw["json"] = encoding.loads(body)
        except ValueError as exc:
            raise BodyError(400, {"error": f"Malformed JSON body: {exc}"}) from None
    elif (declared is None or ctype == "text/plain") and _same_origin(request):
        # fetch(url, {method: "POST", body: JSON.stringify(x)}) sends text/plain: take
        # JSON when it is JSON. Only from the page's own origin (or from no browser at
        # all): a cross-site text/plain POST needs no preflight, and must not reach a
        # handler as if it were JSON.
        with contextlib.suppress(ValueError):
            raw["json"] = encoding.loads(body)


def _same_origin(request: web.BaseRequest) -> bool:
    """True without an ``Origin`` header, or when it names this server's own host."""
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        return True
    try:
        netloc = urllib.parse.urlsplit(origin.strip()).netloc
    except ValueError:
        return False
    return bool(netloc) and netloc.lower() == (request.host or "").lower()


def _is_file(value: Any) -> bool:
    return isinstance(value, web.FileField)


def too_large(limit: int) -> dict[str, Any]:
    """The body of a 413."""
    return {"error": f"Request Entity Too Large: the body is over {limit} bytes", "max_size": limit}


# -- answering ------------------------------------------------------------------------


class BadStatusError(ValueError):
    """A handler answered with something that is not a final HTTP status."""


def make_response(result: Any, resp: HttpResponse) -> web.StreamResponse:
    """The aiohttp response for a handler's ``result`` and its ``response`` object.

    Raises:
        BadStatusError: the status is not an int from 200 to 599.
        SerializationError: the data cannot be encoded as JSON.
    """
    extra: Mapping[str, Any] | None = None
    if isinstance(result, web.StreamResponse):
        if not result.prepared:
            set_headers(result.headers, resp.headers.items())
        return result
    if resp.sent:
        data, status = resp.data, resp.status_code
    elif isinstance(result, tuple) and len(result) == 2 and _is_int(result[1]):
        data, status = result
    elif (
        isinstance(result, tuple)
        and len(result) == 3
        and _is_int(result[1])
        and isinstance(result[2], Mapping)
    ):
        data, status, extra = result
    else:  # any other tuple is a JSON list, as in 0.0.31
        data, status = result, resp.status_code
    if not _is_int(status) or not 200 <= status <= 599:
        raise BadStatusError(f"{status!r} is not an HTTP status from 200 to 599")
    response = json_response(data, status)
    set_headers(response.headers, resp.headers.items())
    if extra:
        set_headers(response.headers, ((str(k), str(v)) for k, v in extra.items()))
    return response


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def json_response(data: Any, status: int, headers: LooseHeaders | None = None) -> web.Response:
    """``data`` as a JSON response (the framework's one encoder)."""
    return web.Response(
        body=encoding.dumps(data), status=status, content_type=JSON, headers=headers
    )


def set_headers(target: CIMultiDict[str], headers: Iterable[tuple[str, str]]) -> None:
    """Set ``headers`` on ``target``: replacing, except the multi-valued ones (Set-Cookie)."""
    for name, value in headers:
        if name.lower() in MULTI_VALUED:
            target.add(name, value)
        else:
            target[name] = value


def _ci_proxy(value: Any) -> CIMultiDictProxy[str]:
    if isinstance(value, CIMultiDictProxy):
        return value
    return CIMultiDictProxy(CIMultiDict(value or {}))


def _proxy(value: Any) -> MultiDictProxy[Any]:
    if isinstance(value, MultiDictProxy):
        return value
    return MultiDictProxy(MultiDict(value or {}))
