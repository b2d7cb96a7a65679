"""Cross-origin rules of :class:`~daebus.DaebusHttp`: which origins may read its responses."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from ._http_routing import allow_header

__all__ = ["CorsPolicy", "add_vary"]

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


def _origin_key(origin: str) -> str:
    # Browsers send scheme and host in lower case, with no trailing slash.
    return origin.strip().rstrip("/").lower()


def add_vary(headers: CIMultiDict[str], name: str) -> None:
    """Add ``name`` to the ``Vary`` header (once)."""
    current = [v.strip() for v in headers.get("Vary", "").split(",") if v.strip()]
    if name.lower() not in (v.lower() for v in current):
        headers["Vary"] = ", ".join([*current, name])
