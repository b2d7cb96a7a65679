"""How an HTTP request finds its answer: route patterns, the route table, and CORS rules.

Used by :mod:`daebus.http`. Patterns are 0.0.31's ``<name>`` segments plus Flask's typed
converters (``<int:id>``, ``<float:x>``, ``<path:rest>``, ``<uuid:u>``). They are checked
when they are registered, not when a request comes.
"""

from __future__ import annotations

import inspect
import logging
import re
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from .exceptions import SetupError

__all__ = ["CorsPolicy", "RouteTable", "allow_header", "canonical_path"]

log = logging.getLogger("daebus.http")

_PARAM = re.compile(r"<(?:(?P<converter>[A-Za-z_]\w*):)?(?P<name>[A-Za-z_]\w*)>")
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
#: converter -> (regex over one path segment or more, conversion of the decoded text)
_CONVERTERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "string": (r"[^/]+", str),
    "int": (r"\d+", int),
    "float": (r"-?\d+(?:\.\d+)?", float),
    "path": (r".+", str),
    "uuid": (_UUID, uuid.UUID),
}


def canonical_path(raw_path: str) -> str:
    """The path with each segment percent-decoded, except ``%`` and ``/`` themselves.

    Route patterns are matched against this, so ``/files/a%2Fb`` is one segment
    ``a/b`` while ``/files/a/b`` is two.
    """
    return "/".join(
        urllib.parse.unquote(segment, errors="replace").replace("%", "%25").replace("/", "%2F")
        for segment in raw_path.split("/")
    )


@dataclass(frozen=True)
class _Route:
    path: str
    pattern: re.Pattern[str]
    converters: tuple[tuple[str, Callable[[str], Any]], ...]
    #: method -> handler
    handlers: dict[str, Callable[..., Any]]

    def match(self, canonical: str) -> dict[str, Any] | None:
        found = self.pattern.fullmatch(canonical)
        if found is None:
            return None
        params: dict[str, Any] = {}
        for name, convert in self.converters:
            params[name] = convert(urllib.parse.unquote(found.group(name)))
        return params


def _compile(path: str) -> tuple[re.Pattern[str], tuple[tuple[str, Callable[[str], Any]], ...]]:
    regex = ""
    converters: list[tuple[str, Callable[[str], Any]]] = []
    position = 0
    for found in _PARAM.finditer(path):
        regex += _literal(path, path[position : found.start()])
        name = found.group("name")
        converter = found.group("converter") or "string"
        if converter not in _CONVERTERS:
            raise SetupError(
                f"route {path!r}: unknown converter {converter!r} "
                f"(use one of {', '.join(sorted(_CONVERTERS))})"
            )
        if any(name == seen for seen, _ in converters):
            raise SetupError(f"route {path!r}: the parameter {name!r} appears twice")
        piece, convert = _CONVERTERS[converter]
        regex += f"(?P<{name}>{piece})"
        converters.append((name, convert))
        position = found.end()
    regex += _literal(path, path[position:])
    return re.compile(regex), tuple(converters)


def _literal(path: str, text: str) -> str:
    if "<" in text or ">" in text:
        raise SetupError(f"route {path!r}: malformed parameter near {text!r} (write <name>)")
    return re.escape(text.replace("%", "%25"))


def _check_handler(path: str, func: Callable[..., Any], names: Iterable[str]) -> None:
    """Fail now, not at request time, if ``func(req, **params)`` cannot be called."""
    if not callable(func):
        raise SetupError(f"route {path!r}: the handler {func!r} is not callable")
    try:
        signature = inspect.signature(func, follow_wrapped=False)
    except (TypeError, ValueError):
        return  # a builtin or C callable: nothing to check
    params = dict.fromkeys(names)
    try:
        signature.bind(None, **params)
    except TypeError as exc:
        wanted = ", ".join(["req", *params])
        raise SetupError(
            f"route {path!r}: the handler {getattr(func, '__qualname__', func)!r} cannot be "
            f"called as handler({wanted}): {exc}"
        ) from exc


class RouteTable:
    """The compiled routes: paths without parameters first, then in registration order."""

    def __init__(self, routes: Iterable[tuple[str, list[str], Callable[..., Any]]]) -> None:
        by_path: dict[str, dict[str, Callable[..., Any]]] = {}
        for path, methods, func in routes:
            table = by_path.setdefault(path, {})
            for method in methods:
                table[method.upper()] = func  # a later registration replaces
        compiled: list[_Route] = []
        for path, handlers in by_path.items():
            pattern, converters = _compile(path)
            names = [name for name, _ in converters]
            for func in set(handlers.values()):
                _check_handler(path, func, names)
            compiled.append(_Route(path, pattern, converters, handlers))
        compiled.sort(key=lambda route: bool(route.converters))  # stable: keeps order
        self.routes = tuple(compiled)

    def match(
        self, canonical: str, method: str
    ) -> tuple[Callable[..., Any] | None, dict[str, Any], set[str]]:
        """The handler for ``method`` and its params, and every method the path takes."""
        allowed: set[str] = set()
        for route in self.routes:
            params = route.match(canonical)
            if params is None:
                continue
            func = route.handlers.get(method)
            if func is None and method == "HEAD":
                func = route.handlers.get("GET")
            if func is not None:
                return func, params, allowed
            allowed.update(route.handlers)
        return None, {}, allowed


def allow_header(methods: Iterable[str]) -> str:
    """The ``Allow`` header of a path taking ``methods`` (HEAD with GET, always OPTIONS)."""
    allowed = set(methods)
    if "GET" in allowed:
        allowed.add("HEAD")
    allowed.add("OPTIONS")
    return ", ".join(sorted(allowed))


# -- CORS -------------------------------------------------------------------------------

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
