"""Serving WebSocket connections: the handshake, the connect gate, and message dispatch.

One :class:`SocketDispatcher` exists per running :class:`~daebus.DaebusWebSocket`. Each
connection is its own aiohttp handler task; its messages are handled one after the
other, plain ``def`` handlers in the service's worker threads and ``async def`` ones on
the loop, each with its own context (so ``request`` is right after an ``await``).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from .. import context, encoding, protocol
from ..exceptions import SerializationError, SetupError
from ..runtime.invoke import accepts_arguments
from ._connection import SocketData, WebSocketConnection

if TYPE_CHECKING:
    from ..runtime import ServiceRuntime
    from ._clients import ClientTable
    from ._component import DaebusWebSocket

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_REJECTED",
    "RESERVED_MESSAGE_TYPES",
    "SocketDispatcher",
    "WebSocketRequest",
    "WebSocketResponse",
    "frame",
    "handled_client",
    "origin_allowed",
]

log = logging.getLogger("daebus.websocket")

#: Close code of a connection the connect handler refused (RFC 6455 policy violation).
CLOSE_REJECTED = 1008
#: Close code when the server stops (RFC 6455 going away).
CLOSE_GOING_AWAY = 1001
#: Types that only the server raises: a client sending them is refused (0.0.31 ran the
#: connect or disconnect handler for such a message, at the client's will).
RESERVED_MESSAGE_TYPES = frozenset({"connect", "disconnect"})


def error_text(error: object) -> str:
    """What an error frame says about ``error``."""
    return str(error) or type(error).__name__


def frame(message_type: str, data: Any) -> bytes:
    """``{"type": message_type, "data": data}`` encoded (the framework's one encoder)."""
    return encoding.dumps({"type": message_type, "data": data})


def handler_error(error: object, message_type: str = "error") -> bytes:
    """A handler's failure: ``{"type": "error", "data": {"error": "..."}}``."""
    return encoding.dumps({"type": message_type, "data": {"error": error_text(error)}})


def protocol_error(text: str, **extra: Any) -> bytes:
    """A protocol error, in 0.0.31's other shape: ``{"type": "error", "error": "..."}``."""
    return encoding.dumps({"type": "error", "error": text, **extra})


def _hostname(netloc: str) -> str | None:
    try:
        return urlsplit(f"//{netloc}").hostname
    except ValueError:
        return None


def origin_allowed(
    origin: str | None, host: str | None, allowed: Collection[str] | None = None
) -> bool:
    """Whether a handshake's ``Origin`` may connect (see ``allowed_origins``).

    No Origin (not a browser): yes. Otherwise an origin listed in ``allowed`` (or
    ``"*"`` listed), or one whose host name is the ``Host`` the browser connects to,
    whatever the ports. ``null`` (a file, a sandboxed frame) only if listed.
    """
    if origin is None:
        return True
    origin = origin.strip().rstrip("/").lower()
    if allowed is not None and ("*" in allowed or origin in allowed):
        return True
    if origin == "null" or not host:
        return False
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    return parts.hostname == _hostname(host.strip().lower())


_INVALID_JSON = protocol_error("Invalid JSON")
_NO_TYPE = protocol_error("No message type provided")
_NOT_AN_OBJECT = protocol_error("Message must be a JSON object")
_REJECTED = "Connection rejected"
_INTERNAL_ERROR = "Internal error"
_UNENCODABLE = "The reply could not be encoded"


@functools.lru_cache(maxsize=512)
def _cached_takes_client_id(func: Callable[..., Any]) -> bool:
    return accepts_arguments(func, 2)


def _arguments(handler: Callable[..., Any], data: Any, client_id: str) -> tuple[Any, ...]:
    """``(data, client_id)``, or ``(data,)`` for a one-argument handler ``(req)``."""
    try:
        two = _cached_takes_client_id(handler)
    except TypeError:  # an unhashable callable
        two = accepts_arguments(handler, 2)
    return (data, client_id) if two else (data,)


class WebSocketRequest:
    """The message a socket handler is handling, as the ``request`` proxy shows it.

    ``payload`` is the whole message, ``data`` its ``data`` field, ``message_type`` its
    ``type``; ``client_id`` and ``websocket`` (the
    :class:`~daebus.websocket.WebSocketConnection`) say who sent it. ``path``, ``query``,
    ``headers`` and ``remote_address`` come from the client's handshake.
    """

    reply_to = None
    request_id = None
    service = "websocket"

    def __init__(
        self, client_id: str, message: Any, websocket: Any = None, *, data: Any = None
    ) -> None:
        self.client_id = client_id
        self.payload = message
        self.raw = message
        is_dict = isinstance(message, dict)
        self.message_type = message.get("type") if is_dict else None
        if data is None and is_dict:
            data = message.get("data", {})
        self.data = data
        self.websocket = websocket

    @property
    def path(self) -> str | None:
        """The path of the client's handshake (``/ws``)."""
        return getattr(self.websocket, "path", None)

    @property
    def query(self) -> dict[str, str]:
        """The query parameters of the client's handshake (``?token=...``)."""
        return dict(getattr(self.websocket, "query", None) or {})

    @property
    def headers(self) -> Any:
        """The headers of the client's handshake (case-insensitive)."""
        return getattr(self.websocket, "headers", {})

    @property
    def remote_address(self) -> tuple[str, int] | None:
        """The client's ``(host, port)``."""
        return getattr(self.websocket, "remote_address", None)

    def __repr__(self) -> str:
        return f"<WebSocketRequest {self.message_type!r} from {self.client_id!r}>"


def handled_client() -> str | None:
    """The id of the client whose message the running handler handles, if any."""
    ctx = context.current_context()
    request = ctx.request if ctx is not None else None
    return request.client_id if isinstance(request, WebSocketRequest) else None


class WebSocketResponse:
    """What the ``response`` proxy is in a socket handler: it sends to the client.

    ``send``, ``error``, ``success`` and ``progress`` work from plain and ``async``
    handlers alike. On the event loop (``async def``) they queue the frame and return
    an awaitable: ``await response.send(x)`` waits until it is written, and without
    ``await`` it is sent all the same. In a worker thread (plain ``def``) they return
    True once the frame is accepted for sending to the connected client, else False.
    Frames leave in the order they were sent, before the handler's return value.
    """

    def __init__(
        self, websocket: Any, client_id: str, *, server: DaebusWebSocket | None = None
    ) -> None:
        self.websocket = websocket
        self.client_id = client_id
        self._server = server

    def __repr__(self) -> str:
        return f"<WebSocketResponse to {self.client_id!r}>"

    @property
    def server(self) -> DaebusWebSocket:
        """The component the client is connected to."""
        if self._server is None:
            ctx = context.current_context()
            server = getattr(ctx.app, "websocket", None) if ctx is not None else None
            if server is None:
                raise SetupError("no DaebusWebSocket is attached to the app")
            self._server = server
        return self._server

    def send(self, data: Any, message_type: str = "response", target_sid: str | None = None) -> Any:
        """Send ``{"type": message_type, "data": data}`` to this client (or ``target_sid``)."""
        return self.server._deliver(target_sid or self.client_id, frame(message_type, data))

    def error(self, err: object, message_type: str = "error", target_sid: str | None = None) -> Any:
        """Send ``{"type": "error", "data": {"error": str(err)}}``."""
        return self.server._deliver(target_sid or self.client_id, handler_error(err, message_type))

    def success(self, data: Any, **kwargs: Any) -> Any:
        """Alias of :meth:`send`."""
        return self.send(data, **kwargs)

    def progress(self, payload: Any, progress_percentage: float | None = None) -> Any:
        """Send a ``progress`` message; a percentage is clamped to 0..100 and added."""
        payload = protocol.progress_payload(payload, progress_percentage)
        return self.send(payload, message_type="progress")

    # 0.0.31 forwarded these to the component in a WebSocket context.
    def broadcast_to_all(self, data: Any, message_type: str = "broadcast") -> int:
        """See :meth:`DaebusWebSocket.broadcast_to_all`."""
        return self.server.broadcast_to_all(data, message_type)

    def send_to_client(self, client_id: str, data: Any, message_type: str = "message") -> bool:
        """See :meth:`DaebusWebSocket.send_to_client`."""
        return self.server.send_to_client(client_id, data, message_type)

    def broadcast_to_clients(
        self, client_ids: Iterable[str], data: Any, message_type: str = "message"
    ) -> dict[str, bool]:
        """See :meth:`DaebusWebSocket.broadcast_to_clients`."""
        return self.server.broadcast_to_clients(client_ids, data, message_type)


def _close_if_asked(connection: WebSocketConnection) -> None:
    """Start the close a handler asked for about its own client, now that it answered."""
    connection.handling = False
    if connection.deferred_close is not None:
        connection.close(*connection.deferred_close)


class SocketDispatcher:
    """Serves the connections of one running :class:`~daebus.DaebusWebSocket`."""

    def __init__(
        self,
        server: DaebusWebSocket,
        table: ClientTable,
        runtime: ServiceRuntime,
        *,
        mounted: bool,
    ) -> None:
        assert server.daemon is not None
        self.server = server
        self.table = table
        self.app = server.daemon
        self.runtime = runtime
        self.metrics = runtime.metrics
        self.loop = runtime.loop
        self.mounted = mounted  # served by DaebusHttp under its path: no path check here

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Serve one connection, from the handshake to the last frame."""
        server = self.server
        if server.path is not None and not self.mounted and request.path != server.path:
            return web.Response(status=404, text="Not Found\n")
        ws: web.WebSocketResponse = web.WebSocketResponse(
            heartbeat=server.heartbeat,
            max_msg_size=server.max_message_size,
            timeout=server.close_timeout,
        )
        if not ws.can_prepare(request):
            return web.Response(
                status=426,
                text="Upgrade Required\n",
                headers={"Upgrade": "websocket", "Connection": "Upgrade"},
            )
        origin = request.headers.get("Origin")
        if not origin_allowed(origin, request.headers.get("Host"), server.allowed_origins):
            log.warning("refused a WebSocket connection from origin %r", origin)
            return web.Response(status=403, text="Origin not allowed\n")
        limit = server.max_connections
        table = self.table
        if limit is not None and len(table.live) + table.handshakes >= limit:
            log.warning("refused a WebSocket connection: %d connections already", limit)
            return web.Response(status=503, text="Too many connections\n")
        table.handshakes += 1  # the slot is taken while the handshake is answered
        try:
            await ws.prepare(request)
        finally:
            table.handshakes -= 1
        connection = WebSocketConnection(
            request,
            ws,
            self.loop,
            server.close_timeout,
            max_queue_size=server.max_queue_size,
            on_close=table.drop,
        )
        client_id = table.unique_id(server.generate_client_id(connection, request.path))
        connection.client_id = client_id
        table.pending[client_id] = connection
        table.live.add(connection)
        try:
            accepted = await self._admit(connection)
            _close_if_asked(connection)
            if accepted:
                await self._serve(connection)
        finally:
            await self._release(connection)
        return ws

    def _context(
        self, connection: WebSocketConnection, message: dict[str, Any], data: Any
    ) -> context.MessageContext:
        request = WebSocketRequest(connection.client_id, message, connection, data=data)
        response = WebSocketResponse(connection, connection.client_id, server=self.server)
        return context.MessageContext(self.app, "websocket", request, response)

    async def _admit(self, connection: WebSocketConnection) -> bool:
        """Run the connect handler; True if the client is accepted."""
        server = self.server
        client_id = connection.client_id
        message: dict[str, Any] = {"type": "connect", "data": dict(connection.query)}
        data = SocketData(connection.query, message, client_id, connection)
        ctx = self._context(connection, message, data)
        handler = self.app.socket_handlers.get("connect")
        result: Any = None
        if handler is not None:
            try:
                result = await self.runtime.invoke(
                    handler, ctx, _arguments(handler, data, client_id)
                )
            except Exception as exc:
                log.warning("connect handler refused client %s: %r", client_id, exc)
                log.debug("the connect handler raised", exc_info=True)
                # The peer is not authenticated: the text only if the app says so.
                shown = exc if self._expose(connect=True) else _REJECTED
                await connection.write(handler_error(shown))
                await connection.close(CLOSE_REJECTED, _REJECTED)
                return False
            if result is False:
                log.info("connect handler refused client %s", client_id)
                await connection.close(CLOSE_REJECTED, _REJECTED)
                return False
        table = self.table
        if table.pending.pop(client_id, None) is None or connection.closed:
            return False  # closed meanwhile (the service is stopping)
        table.accepted[client_id] = connection
        connection.accepted = True
        log.debug("client %s connected from %s", client_id, connection.remote_address[0])
        if result is not None:
            await self._reply(connection, result)
        for func in list(server.connection_handlers):
            try:
                await self.runtime.invoke(func, ctx, (client_id,))
            except Exception:
                log.exception("on_connect handler failed for client %s", client_id)
        return True

    async def _serve(self, connection: WebSocketConnection) -> None:
        ws = connection.response
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                connection.handling = True
                try:
                    await self._on_frame(connection, msg.data)
                finally:
                    connection.handling = False
                _close_if_asked(connection)
            elif msg.type is WSMsgType.ERROR:  # e.g. over max_message_size: closed with 1009
                log.info("closed client %s: %s", connection.client_id, msg.data)
                return
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return

    async def _on_frame(self, connection: WebSocketConnection, raw: str | bytes) -> None:
        client_id = connection.client_id
        connection.messages_received += 1
        if self.metrics is not None:
            self.metrics.websocket_message()
        connection.last_activity = time.time()
        limiter = self.server._limiter
        if limiter is not None and not limiter.allow(client_id):
            await connection.write(
                protocol_error("Rate limit exceeded", retry_after=limiter.window_seconds)
            )
            return
        try:
            message = encoding.loads(raw)
        except ValueError:
            await connection.write(_INVALID_JSON)
            return
        if not isinstance(message, dict):
            await connection.write(_NOT_AN_OBJECT)
            return
        message_type = message.get("type")
        if not message_type:
            await connection.write(_NO_TYPE)
            return
        if isinstance(message_type, str) and message_type in RESERVED_MESSAGE_TYPES:
            reserved = f"Message type '{message_type}' is reserved for the server"
            await connection.write(protocol_error(reserved))
            return
        handler = (
            self.app.socket_handlers.get(message_type) if isinstance(message_type, str) else None
        )
        if handler is None:
            unknown = f"No handler found for message type '{message_type}'"
            await connection.write(protocol_error(unknown))
            return
        data = message.get("data", {})
        if isinstance(data, dict):
            data = SocketData(data, message, client_id, connection)
        ctx = self._context(connection, message, data)
        tracing = self.runtime.tracing
        traced = None if tracing is None else tracing.websocket(message_type, client_id)
        try:
            result = await self.runtime.invoke(handler, ctx, _arguments(handler, data, client_id))
        except Exception as exc:
            if traced is not None:
                traced.failed(exc)
            log.exception("socket handler %r failed for client %s", message_type, client_id)
            await connection.write(handler_error(exc if self._expose() else _INTERNAL_ERROR))
            return
        finally:
            if traced is not None:
                traced.close()
        if result is not None:
            await self._reply(connection, result)

    async def _reply(self, connection: WebSocketConnection, result: Any) -> None:
        try:
            reply = frame("response", result)
        except SerializationError as exc:
            log.error("could not encode the reply to client %s: %s", connection.client_id, exc)
            reply = handler_error(_UNENCODABLE)
        await connection.write(reply)

    def _expose(self, *, connect: bool = False) -> bool:
        """Whether a handler's exception text goes to its client (``expose_errors``)."""
        expose = self.server.expose_errors
        if expose is not None:
            return expose
        return bool(self.app.debug) if connect else True

    async def _release(self, connection: WebSocketConnection) -> None:
        """Forget the client, end its connection, then run the disconnect handlers."""
        server = self.server
        client_id = connection.client_id
        self.table.drop(connection)
        if server._limiter is not None:
            server._limiter.forget(client_id)
        try:
            await connection.finish()
            if connection.accepted:
                log.debug("client %s disconnected", client_id)
                await self._run_disconnect_handlers(connection)
        finally:
            self.table.live.discard(connection)
            if not connection.done.done():
                connection.done.set_result(None)

    async def _run_disconnect_handlers(self, connection: WebSocketConnection) -> None:
        client_id = connection.client_id
        message: dict[str, Any] = {"type": "disconnect", "data": {}}
        data = SocketData({}, message, client_id, connection)
        ctx = self._context(connection, message, data)
        handler = self.app.socket_handlers.get("disconnect")
        if handler is not None:
            try:
                await self.runtime.invoke(handler, ctx, _arguments(handler, data, client_id))
            except Exception:
                log.exception("disconnect handler failed for client %s", client_id)
        for func in list(self.server.disconnection_handlers):
            try:
                await self.runtime.invoke(func, ctx, (client_id,))
            except Exception:
                log.exception("on_disconnect handler failed for client %s", client_id)
