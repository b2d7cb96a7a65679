"""What an app expects of a component: the :class:`Component` protocol.

A component is an object given to ``app.attach()`` that then lives and dies with the
app: :class:`~daebus.DaebusHttp` and :class:`~daebus.DaebusWebSocket` are the two that
ship. The app drives every component through the four methods of :class:`Component`
and nothing else; :class:`MountProvider` is the one extra a component implements to be
served on the HTTP component's port.

Plain Python without aiohttp, so that the app can import it whether or not HTTP is used.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .app import Daebus

__all__ = ["Component", "HttpHandler", "MountProvider"]

#: An aiohttp request handler: ``async def handler(request) -> StreamResponse``.
HttpHandler = Callable[[Any], Awaitable[Any]]


@runtime_checkable
class Component(Protocol):
    """An object attached with ``app.attach()``, told of new handlers, started and stopped.

    The app calls the methods in this order: :meth:`attach` once, then
    :meth:`refresh_handlers` at once and after every change to the handler tables; when
    the service runs, :meth:`start_async` and later :meth:`stop_async` on its loop. The
    app passes itself to the hooks so that one component instance cannot be driven by
    an app it is not attached to.
    """

    def attach(self, app: Daebus) -> None:
        """Become part of ``app``: called by ``app.attach(component)``, once.

        Where a component makes itself reachable (``app.http``, ``app.websocket``) and
        takes what was registered for it before. Raising (``SetupError``: attached to
        another app already) refuses the attachment; the app then does not keep it.
        """

    def refresh_handlers(self, app: Daebus) -> None:
        """Take what changed in ``app.routes`` and ``app.socket_handlers``.

        Called right after :meth:`attach` and after every registration on the app
        (``add_route``, ``add_socket_handler``, ``register_blueprint``), from the thread
        that registers, while the service runs too, so that the order of ``attach()``
        and the decorators does not matter. A ``SetupError`` raised here reaches the
        code that registered.
        """

    async def start_async(self, app: Daebus) -> None:
        """Start serving, on the app's event loop, once its Redis side is up.

        Components start in the order they were attached, before the service counts
        as started. Raising makes the service's start fail (``OSError`` for a port
        that is taken); the components are then stopped.
        """

    async def stop_async(self) -> None:
        """Stop serving, on the app's event loop, before the app's handlers drain.

        Components stop in the reverse order of attachment; one that raises is logged
        and the others still stop. It may be called more than once, and without a
        successful :meth:`start_async` before it (another component failed to start):
        stopping what does not run does nothing.
        """


@runtime_checkable
class MountProvider(Protocol):
    """A component that has paths of its own served on ``DaebusHttp``'s port."""

    def http_mounts(self, app: Daebus) -> Sequence[tuple[str, HttpHandler]]:
        """The ``(path, handler)`` pairs ``DaebusHttp`` serves for this component.

        ``DaebusHttp`` asks as it starts, before it binds its port, and serves each
        path's GET (and HEAD) with the aiohttp ``handler``. A component that returns
        any pair is stopped by ``DaebusHttp`` (:meth:`Component.stop_async`) before it
        waits for its own requests, so that its long-lived connections do not hold
        the HTTP server's stop up.
        """
