"""How an HTTP request finds its handler: route patterns and the route table.

Patterns are 0.0.31's ``<name>`` segments plus Flask's typed converters (``<int:id>``,
``<float:x>``, ``<path:rest>``, ``<uuid:u>``). ``add_route`` compiles a pattern before
it records the route (:func:`compile_pattern`), and :class:`RouteTable` checks each
handler as it takes it, so a bad route fails when it is registered, never at request
time. Plain Python, outside the ``http`` package (whose import loads aiohttp), so that
registering a route (on an app or a blueprint) does not import aiohttp.
"""

from __future__ import annotations

import functools
import inspect
import re
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .exceptions import SetupError

__all__ = ["RoutePattern", "RouteTable", "allow_header", "canonical_path", "compile_pattern"]

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

Handler = Callable[..., Any]


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
class RoutePattern:
    """A compiled route path: a canonical literal, or a regex with converted parameters."""

    path: str
    #: the canonical form of a path without parameters (matched by dict lookup)
    literal: str
    regex: re.Pattern[str]
    converters: tuple[tuple[str, Callable[[str], Any]], ...]

    @property
    def names(self) -> list[str]:
        """The parameter names, in order."""
        return [name for name, _ in self.converters]

    def match(self, canonical: str) -> dict[str, Any] | None:
        """The converted parameters if ``canonical`` matches, else None."""
        found = self.regex.fullmatch(canonical)
        if found is None:
            return None
        params: dict[str, Any] = {}
        for name, convert in self.converters:
            try:
                params[name] = convert(urllib.parse.unquote(found.group(name)))
            except (ValueError, OverflowError):
                return None  # e.g. an <int:> of more digits than int() takes: no match
        return params


def compile_pattern(path: str) -> RoutePattern:
    """Compile a route path; SetupError if it is not a valid pattern."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise SetupError(f"a route path must be a string starting with '/', got {path!r}")
    return _compile(path)


@functools.lru_cache(maxsize=4096)  # add_route and the route table both compile a path
def _compile(path: str) -> RoutePattern:
    regex = ""
    converters: list[tuple[str, Callable[[str], Any]]] = []
    position = 0
    for found in _PARAM.finditer(path):
        regex += re.escape(_literal(path, path[position : found.start()]))
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
    literal = _literal(path, path[position:])
    regex += re.escape(literal)
    return RoutePattern(path, "" if converters else literal, re.compile(regex), tuple(converters))


def _literal(path: str, text: str) -> str:
    if "<" in text or ">" in text:
        raise SetupError(f"route {path!r}: malformed parameter near {text!r} (write <name>)")
    return text.replace("%", "%25")


def check_handler(path: str, func: Handler, names: Iterable[str]) -> None:
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


@dataclass(frozen=True)
class _Route:
    pattern: RoutePattern
    #: method -> handler; replaced, never changed in place (the loop may be reading it)
    handlers: Mapping[str, Handler]
    #: the handler registered last on this path
    last: Handler

    def handler_for(self, method: str) -> Handler | None:
        func = self.handlers.get(method)
        if func is None and method == "HEAD":
            func = self.handlers.get("GET")
        return func


class RouteTable:
    """The served routes: paths without parameters first, then in registration order.

    Adding a route costs the same however many there are. Routes may be added from any
    thread while the loop matches: every change is a single assignment or append.
    """

    def __init__(self) -> None:
        self._static: dict[str, _Route] = {}
        self._dynamic: list[_Route] = []
        self._positions: dict[str, int] = {}
        self._by_path: dict[str, _Route] = {}

    def add(self, path: str, methods: Iterable[str], func: Handler) -> None:
        """Serve ``func`` for ``methods`` on ``path`` (replacing an earlier handler).

        Raises SetupError, leaving the table as it was, if the path is not a valid
        pattern or ``func`` cannot be called as ``func(req, **params)``.
        """
        pattern = compile_pattern(path)
        check_handler(path, func, pattern.names)
        old = self._by_path.get(path)
        handlers = dict(old.handlers) if old is not None else {}
        handlers.update((method.upper(), func) for method in methods)
        route = _Route(pattern, handlers, func)
        if not pattern.converters:
            self._static[pattern.literal] = route
        elif path in self._positions:
            self._dynamic[self._positions[path]] = route
        else:
            self._positions[path] = len(self._dynamic)
            self._dynamic.append(route)
        self._by_path[path] = route

    def __len__(self) -> int:
        """How many (path, method) pairs are served."""
        return sum(len(route.handlers) for route in list(self._by_path.values()))

    def describe(self) -> dict[str, dict[str, Any]]:
        """Path -> ``{"function", "methods", "handlers"}``, in registration order."""
        return {
            path: {
                "function": route.last,
                "methods": list(route.handlers),
                "handlers": dict(route.handlers),
            }
            for path, route in list(self._by_path.items())
        }

    def match(self, canonical: str, method: str) -> tuple[Handler | None, dict[str, Any], set[str]]:
        """The handler for ``method`` and its params, and every method the path takes."""
        allowed: set[str] = set()
        route = self._static.get(canonical)
        if route is not None:
            func = route.handler_for(method)
            if func is not None:
                return func, {}, allowed
            allowed.update(route.handlers)
        for route in self._dynamic:
            params = route.pattern.match(canonical)
            if params is None:
                continue
            func = route.handler_for(method)
            if func is not None:
                return func, params, allowed
            allowed.update(route.handlers)
        return None, {}, allowed

    def template(self, canonical: str) -> str | None:
        """The registered path (``/items/<int:id>``) of the route serving ``canonical``.

        The label of a request in the metrics: a pattern, never the concrete path.
        """
        route = self._static.get(canonical)
        if route is not None:
            return route.pattern.path
        for route in self._dynamic:
            if route.pattern.match(canonical) is not None:
                return route.pattern.path
        return None


def allow_header(methods: Iterable[str]) -> str:
    """The ``Allow`` header of a path taking ``methods`` (HEAD with GET, always OPTIONS)."""
    allowed = set(methods)
    if "GET" in allowed:
        allowed.add("HEAD")
    allowed.add("OPTIONS")
    return ", ".join(sorted(allowed))
