"""Cross-origin rules of :class:`~daebus.DaebusHttp`: which origins may read its responses.

CORS only decides whether a page may *read* a response. A browser sends a "simple"
cross-origin request (a form, or ``fetch`` with a ``text/plain`` body) without asking
first, so :func:`foreign_origin` tells which of those must be refused before they run,
and :func:`cross_origin` marks the route handlers that take them all the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aiohttp import web
from multidict import CIMultiDict

from .._routes import allow_header
from ..exceptions import SetupError

__all__ = [
    "SAFE_METHODS",
    "CorsPolicy",
    "add_vary",
    "cross_origin",
    "foreign_origin",
    "is_cross_origin",
    "same_origin",
]

log = logging.getLogger(__name__)

_CORS_KEYS = {
    "allowed_origins": "origins",
    "allow_origins": "origins",
    "origins": "origins",
    "allowed_methods": "methods",
    "allow_methods": "methods",
    "methods": "methods",
    "allowed_headers": "headers",
    "allow_headers": "headers",
    "headers": "headers",
    "expose_headers": "expose",
    "expose": "expose",
    "allow_credentials": "credentials",
    "supports_credentials": "credentials",
    "credentials": "credentials",
    "max_age": "max_age",
}

#: Methods that change nothing by HTTP's rules: any origin may send them.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

F = TypeVar("F", bound=Callable[..., Any])


def _names(value: Any) -> tuple[str, ...] | None:
    """A list of names from a list or a comma-separated string; None for ``"*"``."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(str(item).strip() for item in items if str(item).strip())
    return None if "*" in names else names


class CorsPolicy:
    """Which cross-origin requests may read the responses, from a ``cors_config`` dict.

    Keys (0.0.31's, with a few aliases): ``allowed_origins`` (a list, or ``"*"``; the
    default), ``allowed_methods`` (default: the route's), ``allowed_headers`` (default
    ``"*"``: what the preflight asks for), ``expose_headers``, ``allow_credentials``
    and ``max_age`` (seconds).

    An origin on the list gets itself back in ``Access-Control-Allow-Origin`` (with
    ``Vary: Origin``, and ``Allow-Credentials`` if configured). ``"*"`` gives a literal
    ``*``, never the caller's origin, and never with credentials: browsers then refuse
    to expose a credentialed response, so ``"*"`` cannot open cookies to every site.
    Requests without an ``Origin`` header get no CORS headers at all.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        settings: dict[str, Any] = {}
        for key, value in config.items():
            name = _CORS_KEYS.get(key)
            if name is None:
                log.warning("cors_config: unknown key %r ignored", key)
                continue
            settings[name] = value
        origins = _names(settings.get("origins", "*"))
        self.origins = None if origins is None else frozenset(map(_origin_key, origins))
        methods = _names(settings.get("methods"))
        self.methods = None if not methods else frozenset(m.upper() for m in methods)
        self.headers = _names(settings.get("headers", "*"))
        expose = _names(settings.get("expose"))
        self.expose = ("*",) if expose is None else expose
        self.credentials = bool(settings.get("credentials", False))
        max_age = settings.get("max_age")
        self.max_age = None if max_age is None else int(max_age)
        if self.origins is None and self.credentials:
            log.warning(
                "cors_config: allowed_origins '*' with allow_credentials: any origin may "
                "make plain requests, but credentialed ones are only allowed to the "
                "origins you list"
            )

    @staticmethod
    def is_preflight(request: web.BaseRequest) -> bool:
        """True for a CORS preflight (``OPTIONS`` with ``Origin`` and the method asked)."""
        headers = request.headers
        return "Origin" in headers and "Access-Control-Request-Method" in headers

    def allows(self, origin: str) -> bool:
        """True if ``origin`` is on the list (or the list is ``"*"``)."""
        return self.origins is None or _origin_key(origin) in self.origins

    def _allow_origin(self, origin: str, headers: CIMultiDict[str]) -> bool:
        if self.origins is None:
            headers["Access-Control-Allow-Origin"] = "*"
            return True
        if _origin_key(origin) not in self.origins:
            return False
        headers["Access-Control-Allow-Origin"] = origin
        if self.credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        return True

    def apply(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        """Add the CORS headers of an actual (non-preflight) response."""
        if response.prepared:
            return
        add_vary(response.headers, "Origin")
        origin = request.headers.get("Origin")
        if origin is None:
            return
        if self._allow_origin(origin, response.headers) and self.expose:
            response.headers["Access-Control-Expose-Headers"] = ", ".join(self.expose)

    def preflight(self, request: web.BaseRequest, methods: set[str]) -> web.Response:
        """Answer a preflight ``OPTIONS`` for a path that takes ``methods``."""
        response = web.Response(status=204)
        response.headers["Allow"] = allow_header(methods)
        add_vary(response.headers, "Origin")
        origin = request.headers.get("Origin", "")
        if not self._allow_origin(origin, response.headers):
            return response
        offered = set(methods) | ({"HEAD"} if "GET" in methods else set())
        if self.methods is not None:
            offered &= self.methods
        if offered:
            response.headers["Access-Control-Allow-Methods"] = ", ".join(sorted(offered))
        asked = request.headers.get("Access-Control-Request-Headers")
        if self.headers is None:
            # The answer echoes the request's header: caches must key on it.
            add_vary(response.headers, "Access-Control-Request-Headers")
            if asked:
                response.headers["Access-Control-Allow-Headers"] = asked
        elif self.headers:
            response.headers["Access-Control-Allow-Headers"] = ", ".join(self.headers)
        if self.max_age is not None:
            response.headers["Access-Control-Max-Age"] = str(self.max_age)
        return response


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


def is_cross_origin(func: Callable[..., Any]) -> bool:
    """Whether the route handler ``func`` was marked with :func:`cross_origin`."""
    return bool(getattr(func, "_daebus_cross_origin", False))


def same_origin(origin: str, host: str | None) -> bool:
    """True if ``origin`` names the ``Host`` the request was sent to (host name and port).

    A port left out is the default of the origin's scheme, on both sides: behind a proxy
    that ends TLS, ``https://example.com`` matches ``Host: example.com``.
    """
    if not host:
        return False
    try:
        page = urlsplit(_origin_key(origin))
        server = urlsplit("//" + host.strip().lower())
        default = _DEFAULT_PORTS.get(page.scheme)
        if default is None or not page.hostname:
            return False  # "null", file:, ...
        return page.hostname == server.hostname and (page.port or default) == (
            server.port or default
        )
    except ValueError:  # a port that is no number, a bad IPv6 address
        return False


def foreign_origin(request: web.BaseRequest, policy: CorsPolicy | None) -> str | None:
    """The ``Origin`` of a state-changing request from a page not allowed to send it.

    None for a safe method, for a request without ``Origin`` (not sent by a browser
    page), from the server's own origin, or from one ``policy`` allows.
    """
    if request.method.upper() in SAFE_METHODS:
        return None
    origin = request.headers.get("Origin")
    if origin is None or same_origin(origin, request.headers.get("Host")):
        return None
    if policy is not None and policy.allows(origin):
        return None
    return origin


def _origin_key(origin: str) -> str:
    # Browsers send scheme and host in lower case, with no trailing slash.
    return origin.strip().rstrip("/").lower()


def add_vary(headers: CIMultiDict[str], name: str) -> None:
    """Add ``name`` to the ``Vary`` header (once)."""
    current = [v.strip() for v in headers.get("Vary", "").split(",") if v.strip()]
    if name.lower() not in (v.lower() for v in current):
        headers["Vary"] = ", ".join([*current, name])
