"""The dashboard's web application: its page, its JSON API and its WebSocket (aiohttp).

- ``GET /``, ``/dashboard.js``, ``/dashboard.css``: the page, files shipped in the
  package (``static/``), no build step. They hold no data: everything comes from:
- ``GET /api/snapshot``: the figures of the last tick (see :mod:`._snapshot`);
- ``POST /api/call`` ``{"service", "action", "payload", "timeout"}``: make a call, wait
  for its end; ``{"ok", "reply" | "error", "parts", "ms"}``;
- ``POST /api/publish`` ``{"channel", "message"}``: ``{"receivers": n}``;
- ``GET /ws``: a snapshot every second, and calls whose parts arrive as they come.

Every request passes :class:`~daebus.dashboard._guard.Guard` first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from .. import encoding
from ..exceptions import DaebusError
from ..transport import transport_from_url
from ._guard import Guard
from ._observer import BusObserver
from ._operations import (
    MAX_BODY,
    BadInputError,
    call,
    parse_call,
    parse_publish,
    publish,
)
from ._snapshot import Feed

__all__ = ["STATIC", "Dashboard"]

logger = logging.getLogger(__name__)

#: The page's files, by the path they are served at.
STATIC = Path(__file__).with_name("static")
_FILES = {
    "/": ("index.html", "text/html"),
    "/dashboard.js": ("dashboard.js", "text/javascript"),
    "/dashboard.css": ("dashboard.css", "text/css"),
}
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # Nothing but the page's own files, and the WebSocket back to this server.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}
#: Calls under way at once, over every client; past it a call is refused (429).
MAX_CALLS = 16
#: Calls of one WebSocket under way at once; past it, the next ones are refused.
MAX_SOCKET_CALLS = 8
#: Seconds a WebSocket has to send its token when one is required.
AUTH_WITHIN = 10.0
#: Seconds a snapshot may take to reach one WebSocket before that client is dropped.
SEND_WITHIN = 5.0

_INVALID = object()  # the type of a WebSocket message that is not a JSON object


class Dashboard:
    """The observer, the feed and the aiohttp application of one dashboard."""

    def __init__(self, url: str, *, token: str | None = None) -> None:
        self.url = url
        self.guard = Guard(token)
        self.observer = BusObserver()
        # One connection for the observer's subscription and the page's publishes.
        self.transport = transport_from_url(url)
        self.feed = Feed(url, self.observer, self.transport)
        self._calls = asyncio.Semaphore(MAX_CALLS)
        self._sockets: set[web.WebSocketResponse] = set()

    def make_app(self) -> web.Application:
        """The aiohttp application; starting it starts the observer and the feed."""
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._guarded])
        app.router.add_get("/", self._file)
        app.router.add_get("/dashboard.js", self._file)
        app.router.add_get("/dashboard.css", self._file)
        app.router.add_get("/api/snapshot", self._snapshot)
        app.router.add_post("/api/call", self._call)
        app.router.add_post("/api/publish", self._publish)
        app.router.add_get("/ws", self._socket)
        app.on_startup.append(self._start)
        app.on_shutdown.append(self._close_sockets)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app: web.Application) -> None:
        await self.transport.connect()
        self.feed.start()

    async def _stop(self, app: web.Application) -> None:
        await self.feed.stop()
        await self.transport.close()

    async def _close_sockets(self, app: web.Application) -> None:
        for socket in list(self._sockets):
            await socket.close(code=1001, message=b"the dashboard stops")

    # -- the guard -------------------------------------------------------------------
    @web.middleware
    async def _guarded(self, request: web.Request, handler: Any) -> web.StreamResponse:
        host = request.headers.get("Host")
        if not self.guard.host_allowed(host):
            return _error(421, "this dashboard answers on a loopback address only")
        if not self.guard.origin_allowed(request.headers.get("Origin"), host):
            return _error(403, "requests from pages of another origin are refused")
        path = request.path
        if path.startswith("/api/"):
            if not self.guard.token_matches(self.guard.header_token(request.headers)):
                return _error(401, "a token is required: Authorization: Bearer <token>")
            if request.method == "POST" and request.content_type != "application/json":
                return _error(415, "send application/json")
        response: web.StreamResponse = await handler(request)
        return response

    # -- the page --------------------------------------------------------------------
    async def _file(self, request: web.Request) -> web.StreamResponse:
        name, content_type = _FILES[request.path]
        body = await asyncio.to_thread((STATIC / name).read_bytes)
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=_HEADERS)

    # -- the API ---------------------------------------------------------------------
    async def _snapshot(self, request: web.Request) -> web.Response:
        if not self.feed.watchers:  # no page watches: the figures may be stale
            await self.feed.refresh()
        return _json(self.feed.snapshot())

    async def _call(self, request: web.Request) -> web.Response:
        try:
            wanted = parse_call(await _body(request))
        except BadInputError as exc:
            return _error(400, str(exc))
        if self._calls.locked():
            return _error(429, f"{MAX_CALLS} calls are under way: try again when one ends")
        parts: list[Any] = []

        async def keep(part: Any) -> None:
            parts.append(part)

        async with self._calls:
            outcome = await call(self.url, wanted, keep)
        return _json({**outcome, "part_payloads": parts})

    async def _publish(self, request: web.Request) -> web.Response:
        try:
            wanted = parse_publish(await _body(request))
        except BadInputError as exc:
            return _error(400, str(exc))
        try:
            receivers = await publish(self.transport, wanted)
        except DaebusError as exc:
            return _error(502, str(exc))
        return _json({"receivers": receivers})

    # -- the WebSocket ---------------------------------------------------------------
    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(heartbeat=30.0, max_msg_size=MAX_BODY)
        await socket.prepare(request)
        self._sockets.add(socket)
        session = _Session(self, socket)
        try:
            if self.guard.token_matches(self.guard.header_token(request.headers)):
                session.authorized = True
            await session.run()
        finally:
            self._sockets.discard(socket)
            await session.close()
        return socket


class _Session:
    """One WebSocket: its token, the snapshots it is sent, and the calls it made."""

    def __init__(self, dashboard: Dashboard, socket: web.WebSocketResponse) -> None:
        self.dashboard = dashboard
        self.socket = socket
        self.authorized = False
        self.tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    async def run(self) -> None:
        if self.authorized:
            await self._welcome()
        else:
            await self.send({"type": "auth_required"})
            try:
                first = await self.socket.receive(timeout=AUTH_WITHIN)
            except asyncio.TimeoutError:
                await self.socket.close(code=4001, message=b"no token")
                return
            token = _message(first).get("token")
            if not self.dashboard.guard.token_matches(token):
                await self.send({"type": "error", "error": "wrong token"})
                await self.socket.close(code=4001, message=b"wrong token")
                return
            self.authorized = True
            await self._welcome()
        async for received in self.socket:
            if received.type != WSMsgType.TEXT:
                continue
            await self._handle(_message(received))

    async def _welcome(self) -> None:
        feed = self.dashboard.feed
        await feed.watch(self.push)
        await self.send({"type": "ready"})
        # The first snapshot now, not at the next tick: the page is not empty for a second.
        with contextlib.suppress(DaebusError, OSError):
            await feed.refresh()
        await self.push(feed.snapshot())

    async def push(self, snapshot: dict[str, Any]) -> None:
        """Send one snapshot; raises if the client takes too long (the feed drops it)."""
        await asyncio.wait_for(self.send({"type": "snapshot", "data": snapshot}), SEND_WITHIN)

    async def send(self, message: dict[str, Any]) -> None:
        if self.socket.closed:
            raise ConnectionResetError("the WebSocket is closed")
        text = encoding.dumps(message).decode()
        async with self._lock:
            await self.socket.send_str(text)

    async def _handle(self, message: dict[str, Any]) -> None:
        # Awaited before the next message is read, but for calls, which may take long:
        # a client that sends faster than it is answered is simply read more slowly.
        kind = message.get("type")
        ident = message.get("id")
        if not isinstance(ident, int | str) or isinstance(ident, bool):
            ident = None
        if kind == "call":
            if len(self.tasks) >= MAX_SOCKET_CALLS:
                error = f"{MAX_SOCKET_CALLS} calls of this page are under way"
                await self._quietly(self.send({"type": "error", "id": ident, "error": error}))
                return
            task = asyncio.get_running_loop().create_task(self._call_quietly(ident, message))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif kind == "publish":
            await self._quietly(self._publish(ident, message))
        elif kind != "auth":
            error = "not a JSON object" if kind == _INVALID else f"unknown type {kind!r}"
            await self._quietly(self.send({"type": "error", "id": ident, "error": error[:200]}))

    async def _quietly(self, work: Any) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError, asyncio.TimeoutError):
            await work

    async def _call_quietly(self, ident: Any, message: dict[str, Any]) -> None:
        # The call's coroutine is made here, in the task: a task cancelled before it
        # starts leaves no coroutine never awaited.
        await self._quietly(self._call(ident, message))

    async def _call(self, ident: Any, message: dict[str, Any]) -> None:
        try:
            wanted = parse_call(message)
        except BadInputError as exc:
            await self.send({"type": "error", "id": ident, "error": str(exc)})
            return
        calls = self.dashboard._calls
        if calls.locked():
            await self.send({"type": "error", "id": ident, "error": "too many calls under way"})
            return

        async def part(payload: Any) -> None:
            await self.send({"type": "part", "id": ident, "payload": payload})

        async with calls:
            outcome = await call(self.dashboard.url, wanted, part)
        await self.send({"type": "reply", "id": ident, **outcome})

    async def _publish(self, ident: Any, message: dict[str, Any]) -> None:
        try:
            wanted = parse_publish(message)
            receivers = await publish(self.dashboard.transport, wanted)
        except DaebusError as exc:
            await self.send({"type": "error", "id": ident, "error": str(exc)})
            return
        await self.send({"type": "published", "id": ident, "receivers": receivers})

    async def close(self) -> None:
        self.dashboard.feed.watchers.discard(self.push)
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


def _message(received: Any) -> dict[str, Any]:
    """A WebSocket message as a JSON object; an empty one when it is not."""
    if received.type != WSMsgType.TEXT:
        return {}
    try:
        value = json.loads(received.data)
    except ValueError:
        return {"type": _INVALID}
    return value if isinstance(value, dict) else {"type": _INVALID}


async def _body(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError as exc:
        raise BadInputError(f"the body is not valid JSON: {exc}") from None


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=encoding.dumps(value),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)
