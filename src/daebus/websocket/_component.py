"""The :class:`DaebusWebSocket` component: its settings, and what services call on it.

The component is a facade. Where it listens is :mod:`._server`'s, serving a connection
is :mod:`._dispatch`'s, and the clients and sending to them from any thread are
:mod:`._clients`'. 0.0.31's second names for its methods are grouped at the end.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from ..exceptions import SetupError
from ._clients import ClientTable, new_client_id
from ._connection import DEFAULT_MAX_QUEUE_SIZE, RateLimiter, WebSocketConnection
from ._dispatch import frame as encode_frame, handled_client
from ._server import SocketServer

if TYPE_CHECKING:
    from ..app import Daebus
    from ..components import Component, HttpHandler, MountProvider

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "DaebusWebSocket"]

log = logging.getLogger("daebus.websocket")

F = TypeVar("F", bound=Callable[..., Any])

#: 0.0.31's limit (the ``websockets`` library's default).
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024


class DaebusWebSocket:
    """WebSocket endpoints of a service, attached with ``app.attach(DaebusWebSocket())``.

    Where it listens (0.0.31's rules, whatever the order of the ``attach`` calls):

    - with ``DaebusHttp`` attached and no ``port``: the HTTP port + 1 (0 stays 0);
    - ``port`` equal to the HTTP port: the HTTP port + 1, with a warning;
    - without ``DaebusHttp``, ``port`` is required (the service fails to start without);
    - ``path="/ws"`` with ``DaebusHttp`` attached and no ``port`` (or the HTTP port):
      no port of its own, it is served by ``DaebusHttp`` under that path.

    The HTTP port is the one ``DaebusHttp`` is asked for when the service starts. On
    its own port it accepts the upgrade on any path (or only ``path`` if given) and
    answers plain HTTP with 426. A port that is taken makes the start fail (``OSError``).

    Args:
        port: the port to listen on (0: any free port; see :meth:`get_websocket_port`).
        path: serve only this path; with ``DaebusHttp``, on the HTTP port.
        host: address to bind; defaults to the HTTP component's host, else ``0.0.0.0``
            (0.0.31's, so that kiosk browsers on the network can connect).
        allowed_origins: browser origins allowed besides the page's own host
            (``"https://kiosk.local"``), or ``"*"`` for any. By default a browser is let
            in only when its page's host name is the one it connects to (any port: a page
            from port 8080 may use 8081); other origins, ``null`` (a file, a sandbox)
            included, get 403 at the handshake. Clients that send no Origin (not
            browsers) are always allowed. 0.0.31 allowed every origin: this is a
            deliberate change against cross-site WebSocket hijacking.
        max_message_size: a bigger frame closes the connection with code 1009.
        max_connections: more connections are refused with 503 (None: no limit).
        max_queue_size: bytes a client's outbox holds; a client past it that does not
            read (its socket takes no more data) is closed with code 1008
            (:data:`~daebus.websocket.CLOSE_TOO_SLOW`) and dropped.
        heartbeat: seconds between pings; a client that does not answer is dropped.
        send_timeout: how long a send from another thread waits for the event loop.
        close_timeout: how long a close waits for the client before cutting it off.
        expose_errors: send a failing handler's exception text to its client. None: as
            0.0.31 for message handlers (``{"error": str(e)}``), but a refusing connect
            handler's text only when the app runs with ``debug=True``. False: neither
            (``"Internal error"`` / ``"Connection rejected"``); True: both.
        ssl_context: serve ``wss://`` with this context.

    Connect handlers (``@app.socket_connect()``) are called as ``handler(data, client_id)``
    right after the handshake, before any message of the client is handled. ``data`` holds
    the handshake's query parameters (``ws://host:8081/?token=abc`` gives
    ``data["token"] == "abc"``), and ``request.path``, ``request.query``,
    ``request.headers`` and ``request.remote_address`` describe the handshake. Returning
    ``False`` refuses the client, and so does raising, which sends it an error frame
    first (``"Connection rejected"``, see ``expose_errors``): it is closed with code 1008
    and no disconnect handler runs for it. Any other value that is not None is sent as
    a ``response``. A client may not send the ``connect`` or ``disconnect`` types itself.

    Message handlers are called as ``handler(data, client_id)`` (or ``handler(data)``).
    A dict ``data`` is a :class:`~daebus.websocket.SocketData`: the dict the client sent,
    which also answers ``.data``, ``.payload``, ``.client_id`` and ``.message_type``.

    Client ids come from :meth:`set_client_id_generator` (default ``user_<uuid4>``); an
    id already in use gets a ``_2``, ``_3``, ... suffix, so no connection replaces
    another. Until the connect handler accepted it, a client can be sent to and looked
    up by id, but it is not listed, counted nor reached by broadcasts.

    The sending and closing methods work from any thread and never wait for a client's
    socket. What they return means *accepted for a live client*: the frame went into
    the outbox of a connected client (or its close started), as 0.0.31's in-loop path
    meant too. Frames leave in the order they were accepted. From a thread other than
    the loop's they wait (at most ``send_timeout``) for the loop to take the work; on
    the loop they do it at once. Await the ``*_async`` twins to wait for the writes.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        path: str | None = None,
        host: str | None = None,
        allowed_origins: str | Iterable[str] | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_connections: int | None = 1000,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        heartbeat: float | None = 20.0,
        send_timeout: float = 5.0,
        close_timeout: float = 5.0,
        expose_errors: bool | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if port is not None and (not isinstance(port, int) or not 0 <= port <= 65535):
            raise SetupError(f"port must be an int from 0 to 65535, got {port!r}")
        if path is not None and (not isinstance(path, str) or not path.startswith("/")):
            raise SetupError(f"path must be a string starting with '/', got {path!r}")
        if max_connections is not None and max_connections < 1:
            raise SetupError("max_connections must be at least 1 (or None for no limit)")
        if max_message_size < 1:
            raise SetupError("max_message_size must be at least 1")
        if max_queue_size < 1:
            raise SetupError("max_queue_size must be at least 1")
        self.requested_port = port
        self.path = path
        self._host = host
        if isinstance(allowed_origins, str):
            allowed_origins = [allowed_origins]
        self.allowed_origins: frozenset[str] | None = (
            None
            if allowed_origins is None
            else frozenset(origin.rstrip("/").lower() for origin in allowed_origins)
        )
        self.max_message_size = max_message_size
        self.max_connections = max_connections
        self.max_queue_size = max_queue_size
        self.heartbeat = heartbeat
        self.send_timeout = send_timeout
        self.close_timeout = close_timeout
        self.expose_errors = expose_errors
        self.ssl_context = ssl_context
        self.logger = log
        self.daemon: Daebus | None = None
        #: ``on_connect`` / ``on_disconnect`` functions, called with ``(client_id)``.
        self.connection_handlers: list[Callable[..., Any]] = []
        self.disconnection_handlers: list[Callable[..., Any]] = []
        self.client_id_generator: Callable[[Any, str], Any] | None = None
        self._own_handlers: dict[str, Callable[..., Any]] = {}
        self._limiter: RateLimiter | None = None
        self._table = ClientTable(self)
        self._server = SocketServer(self, self._table)

    def __repr__(self) -> str:
        where = self.path if self._mounted() else f"port {self.get_websocket_port()}"
        return f"<DaebusWebSocket {where}, {len(self._table.accepted)} client(s)>"

    # -- configuration ---------------------------------------------------------------
    @property
    def port(self) -> int | None:
        """The port to listen on (resolved from the HTTP port when none was given)."""
        return self._server.plan().port

    @port.setter
    def port(self, value: int | None) -> None:
        self.requested_port = value
        if self.daemon is not None:
            self._server.plan(warn=True)

    @property
    def host(self) -> str:
        """The address the server binds: the given host, else HTTP's, else ``0.0.0.0``."""
        if self._host is not None:
            return self._host
        http = self.daemon.http if self.daemon is not None else None
        http_host = getattr(http, "host", None)
        return http_host if isinstance(http_host, str) and http_host else "0.0.0.0"

    @host.setter
    def host(self, value: str | None) -> None:
        self._host = value

    def get_websocket_port(self) -> int | None:
        """The port clients connect to (the real one once started, also for port 0)."""
        return self._server.public_port()

    @property
    def is_running(self) -> bool:
        """True while connections are accepted."""
        return self._server.accepting

    @property
    def server(self) -> web.ServerRunner | None:
        """The aiohttp runner of the component's own server (None when mounted on HTTP)."""
        return self._server.runner

    def _mounted(self) -> bool:
        return self._server.plan().mounted

    # -- the component protocol (daebus.components.Component, MountProvider) -----------
    def attach(self, app: Daebus) -> None:
        """Called by ``app.attach``: become ``app.websocket`` and take the app's handlers."""
        if self.daemon is not None and self.daemon is not app:
            raise SetupError("this DaebusWebSocket is already attached to another app")
        self.daemon = app
        app.websocket = self
        own, self._own_handlers = self._own_handlers, {}
        for message_type, func in own.items():
            app.add_socket_handler(message_type, func)
        self._server.plan(warn=True)

    def refresh_handlers(self, app: Daebus) -> None:
        """Called by the app when handlers or components change (warns of a late HTTP)."""
        if app is self.daemon:
            self._server.plan(warn=True)

    def http_mounts(self, app: Daebus) -> list[tuple[str, HttpHandler]]:
        """The ``(path, handler)`` pairs an attached ``DaebusHttp`` serves for us.

        ``DaebusHttp`` asks as it starts, before it binds: its ``port`` is then still
        the one it was asked for, which the port rules go by.
        """
        if app is not self.daemon:
            return []
        self._server.remember_http_port()
        if self.path is not None and self._mounted():
            return [(self.path, self._server.handle)]
        return []

    async def start_async(self, app: Daebus) -> None:
        """Start serving (called by the app once its runtime is up, on its loop)."""
        if app is not self.daemon:
            raise SetupError("start_async() called with an app this component is not attached to")
        await self._server.start(app)

    async def stop_async(self) -> None:
        """Close every client (1001, going away) and stop listening.

        Takes at most about ``close_timeout`` (for all clients together): a client that
        has not completed its close by then is cut off.
        """
        await self._server.stop()

    # -- registration ------------------------------------------------------------------
    @property
    def message_handlers(self) -> dict[str, Callable[..., Any]]:
        """Message type -> handler: the app's ``socket_handlers`` once attached."""
        return self.daemon.socket_handlers if self.daemon is not None else self._own_handlers

    def on_connect(self, func: F) -> F:
        """Call ``func(client_id)`` for every accepted client (a plain decorator)."""
        self.connection_handlers.append(func)
        return func

    def on_disconnect(self, func: F) -> F:
        """Call ``func(client_id)`` when an accepted client has gone (a plain decorator)."""
        self.disconnection_handlers.append(func)
        return func

    def set_client_id_generator(self, func: Callable[[Any, str], Any] | None) -> None:
        """Make client ids with ``func(websocket, path)`` (None: back to ``user_<uuid4>``)."""
        self.client_id_generator = func

    def generate_client_id(self, websocket: Any, path: str) -> str:
        """A new client's id from the generator, or ``user_<uuid4>`` if it fails."""
        return new_client_id(self.client_id_generator, websocket, path)

    # -- rate limiting -----------------------------------------------------------------
    def enable_rate_limiting(self, max_messages: int = 60, window_seconds: float = 60) -> None:
        """Allow each client at most ``max_messages`` in any ``window_seconds``.

        Over the limit a message is answered with ``{"type": "error", "error": "Rate
        limit exceeded", "retry_after": window_seconds}`` and not handled nor counted.
        """
        if max_messages < 1 or window_seconds <= 0:
            raise SetupError("rate limiting needs max_messages >= 1 and window_seconds > 0")
        self._limiter = RateLimiter(max_messages, window_seconds)

    def disable_rate_limiting(self) -> None:
        """Stop limiting clients."""
        self._limiter = None

    @property
    def rate_limit_enabled(self) -> bool:
        """Whether rate limiting is on."""
        return self._limiter is not None

    @property
    def rate_limit_max_messages(self) -> int | None:
        """Messages allowed per window (None when off)."""
        return self._limiter.max_messages if self._limiter is not None else None

    @property
    def rate_limit_window(self) -> float | None:
        """The window in seconds (None when off)."""
        return self._limiter.window_seconds if self._limiter is not None else None

    def is_rate_limited(self, client_id: str) -> bool:
        """Whether the client's next message would be refused."""
        limiter = self._limiter
        return limiter is not None and limiter.is_limited(client_id)

    def record_message_received(self, client_id: str) -> None:
        """Count a message of the client against its limit, without checking the limit.

        The server counts every message it lets through itself; this is for messages
        that reach the service another way.
        """
        limiter = self._limiter
        if limiter is not None:
            limiter.record(client_id)

    # -- clients -----------------------------------------------------------------------
    @property
    def clients(self) -> dict[str, WebSocketConnection]:
        """Client id -> connection of every accepted client (a snapshot)."""
        return dict(self._table.accepted)

    @property
    def client_metadata(self) -> dict[str, dict[str, Any]]:
        """Client id -> metadata of every accepted client (a snapshot)."""
        return {cid: conn.metadata() for cid, conn in list(self._table.accepted.items())}

    def get_clients(self) -> list[str]:
        """The ids of the accepted clients."""
        return list(self._table.accepted)

    def get_client_count(self) -> int:
        """How many clients are connected."""
        return len(self._table.accepted)

    def is_client_connected(self, client_id: str) -> bool:
        """Whether ``client_id`` is an accepted client whose connection is open."""
        connection = self._table.accepted.get(client_id)
        return connection is not None and not connection.closed

    def get_client_metadata(self, client_id: str) -> dict[str, Any] | None:
        """``connected_at``, ``path``, ``remote_address``, ``secure``, counters...; or None."""
        connection = self._table.lookup(client_id)
        return connection.metadata() if connection is not None else None

    def get_clients_by_filter(self, predicate: Callable[[str, dict[str, Any]], Any]) -> list[str]:
        """The ids of the clients for which ``predicate(client_id, metadata)`` is true."""
        return [cid for cid, meta in self.client_metadata.items() if predicate(cid, meta)]

    # -- sending -----------------------------------------------------------------------
    def _deliver(self, client_id: str, frame: bytes) -> Any:
        return self._table.deliver(client_id, frame)

    def send(self, data: Any, message_type: str = "response") -> None:
        """Send to the client whose message is being handled (from its handler)."""
        client_id = handled_client()
        if client_id is None:
            log.error("websocket.send() called outside a WebSocket handler; nothing was sent")
            return
        self._table.deliver(client_id, encode_frame(message_type, data))

    def send_to_client(self, client_id: str, data: Any, message_type: str = "message") -> bool:
        """Send ``{"type": message_type, "data": data}`` to one client.

        Returns whether it was accepted for sending to the connected client; False for
        an unknown or closing client.
        """
        return self._table.send([client_id], encode_frame(message_type, data))[client_id]

    async def send_to_client_async(
        self, client_id: str, data: Any, message_type: str = "message"
    ) -> bool:
        """Send to one client and wait (``send_timeout``) until it is written."""
        results = await self.broadcast_to_clients_async([client_id], data, message_type)
        return results[client_id]

    def broadcast_to_all(self, data: Any, message_type: str = "broadcast") -> int:
        """Send to every client; returns how many accepted it for sending."""
        return self._table.broadcast(encode_frame(message_type, data))

    async def broadcast_to_all_async(self, data: Any, message_type: str = "broadcast") -> int:
        """Send to every client and wait; returns how many it was written to."""
        results = await self.broadcast_to_clients_async(
            list(self._table.accepted), data, message_type
        )
        return sum(results.values())

    def broadcast_to_clients(
        self, client_ids: Iterable[str], data: Any, message_type: str = "message"
    ) -> dict[str, bool]:
        """Send to some clients; returns client id -> accepted (False for unknown ids)."""
        return self._table.send(list(client_ids), encode_frame(message_type, data))

    async def broadcast_to_clients_async(
        self, client_ids: Iterable[str], data: Any, message_type: str = "message"
    ) -> dict[str, bool]:
        """Send to some clients and wait (``send_timeout``); client id -> written."""
        ids = list(client_ids)
        encoded = encode_frame(message_type, data)
        table = self._table
        return await table.await_on_loop(
            lambda: table.send_frames(ids, encoded), dict.fromkeys(ids, False)
        )

    # -- closing -----------------------------------------------------------------------
    def disconnect_client(
        self, client_id: str, code: int = 1000, reason: str = "Server closed connection"
    ) -> bool:
        """Close one client's connection; returns whether the client is gone.

        True once it is off the client list with its close started (False if it was
        not connected): nothing more is sent to it, the frames sent before go first,
        and a client that does not complete the close within ``close_timeout`` is cut
        off. The disconnect handlers run when its connection has ended.
        """
        return self._table.close([client_id], code, reason) == 1

    def disconnect_all_clients(self, code: int = 1000, reason: str = "Server shutting down") -> int:
        """Close every client's connection (as :meth:`disconnect_client`); how many."""
        return self._table.close(list(self._table.accepted), code, reason)

    def graceful_shutdown(self, timeout: float = 5.0, message: Any = None) -> int:
        """Stop accepting, tell every client, close them all; returns how many were closed.

        A dict ``message`` is sent first as ``{"type": "server_shutdown", "data":
        message}`` (another value as ``{"message": str(value)}``). Clients are closed with
        code 1001, and the call waits up to ``timeout`` seconds for them to go away
        (from the event loop it only starts all this, and counts the connected clients,
        not those still in their connect handler). The service itself keeps running.
        """
        skip = handled_client()
        server, table = self._server, self._table
        if table.on_loop():
            count = len(table.accepted)
            table.keep(server.shut_down_gracefully(timeout, message, skip))
            return count
        return table.call_on_loop(
            lambda: server.shut_down_gracefully(timeout, message, skip), 0, timeout + 1
        )

    async def graceful_shutdown_async(self, timeout: float = 5.0, message: Any = None) -> int:
        """:meth:`graceful_shutdown`, awaited until the clients are gone (or ``timeout``)."""
        skip = handled_client()
        server = self._server
        return await self._table.await_on_loop(
            lambda: server.shut_down_gracefully(timeout, message, skip), 0
        )

    # -- 0.0.31's names ----------------------------------------------------------------
    @property
    def actual_port(self) -> int | None:
        """The port clients connect to: the bound port once running."""
        return self.get_websocket_port()

    def socket(self, message_type: str) -> Callable[[F], F]:
        """Register the handler of ``{"type": message_type}`` messages (as ``app.socket``)."""

        def decorator(func: F) -> F:
            if self.daemon is not None:
                self.daemon.add_socket_handler(message_type, func)
            else:
                if not isinstance(message_type, str) or not message_type:
                    raise SetupError(
                        f"socket message type must be a non-empty string, got {message_type!r}"
                    )
                self._own_handlers[message_type] = func
            return func

        return decorator

    def socket_connect(self) -> Callable[[F], F]:
        """Register the connect handler (it may refuse the client by returning False)."""
        return self.socket("connect")

    def socket_disconnect(self) -> Callable[[F], F]:
        """Register the disconnect handler."""
        return self.socket("disconnect")

    def socket_register(self) -> Callable[[F], F]:
        """Register the handler of ``register`` messages."""
        return self.socket("register")

    def safe_send_to_client(self, client_id: str, data: Any, message_type: str = "message") -> bool:
        """:meth:`send_to_client` that never raises (False on any failure)."""
        try:
            return self.send_to_client(client_id, data, message_type)
        except Exception:
            log.exception("sending to client %s failed", client_id)
            return False

    def safe_broadcast_to_all(self, data: Any, message_type: str = "broadcast") -> int:
        """:meth:`broadcast_to_all` that never raises (0 on any failure)."""
        try:
            return self.broadcast_to_all(data, message_type)
        except Exception:
            log.exception("broadcasting to all clients failed")
            return 0


if TYPE_CHECKING:  # mypy checks that DaebusWebSocket keeps to the protocols it serves
    _component: type[Component] = DaebusWebSocket
    _mount_provider: type[MountProvider] = DaebusWebSocket
