"""HTTP endpoints: :class:`DaebusHttp` serves the app's routes with aiohttp on its event loop.

Routes come from ``app.routes`` (``@app.route``, ``Blueprint.route``, ``http.route``),
whenever they were registered. ``async def`` handlers run on the service's loop, plain
``def`` handlers in the component's own worker threads, each with ``request`` /
``response`` bound to an :class:`HttpRequest` and an :class:`HttpResponse`::

    http = DaebusHttp(port=8080)
    app.attach(http)

    @app.route("/users/<int:user_id>", methods=["GET", "DELETE"])
    def user(req, user_id):
        return {"id": user_id, "method": req.method}

What a handler returns is sent as JSON, strings and bytes included (as in 0.0.31); to
send HTML or anything else, return an ``aiohttp.web.Response``.

A browser page of another origin may not POST (PUT, DELETE, ...) to a route: such a
request gets 403 before the handler runs, unless ``cors_config`` allows the origin or
the handler is marked :func:`cross_origin`.

aiohttp does the HTTP/1.1 work (keep-alive, Content-Length, chunked bodies, HEAD); this
package does the routing, so that routes can be added while the service runs and 404,
405, OPTIONS and CORS answer the same way for every route.
"""

from __future__ import annotations

from ._component import DaebusHttp
from ._cors import CorsPolicy, cross_origin
from ._dispatch import MountHandler as MountHandler
from ._messages import HttpRequest, HttpResponse

__all__ = ["CorsPolicy", "DaebusHttp", "HttpRequest", "HttpResponse", "cross_origin"]
