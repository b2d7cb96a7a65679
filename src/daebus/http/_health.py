"""``/healthz`` and ``/readyz``, served by ``DaebusHttp(health=True)``.

``/healthz`` answers 200 while the service's event loop answers at all: the probe of
a supervisor that restarts what hangs. ``/readyz`` answers 200 when the instance is
ready (started, subscribed, not stopping, every ``@app.health_check`` passing), else
503 with the reasons: the probe of a load balancer. Both bodies are JSON.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..runtime.readiness import readiness

if TYPE_CHECKING:
    from ..app import Daebus
    from ._dispatch import MountHandler

__all__ = ["HEALTH_PATHS", "health_mounts"]

#: The paths served, alive and ready.
HEALTH_PATHS = ("/healthz", "/readyz")


def health_mounts(app: Daebus) -> dict[str, MountHandler]:
    """The handlers of :data:`HEALTH_PATHS` for ``app``."""

    async def healthz(_request: web.Request) -> web.StreamResponse:
        body = {"status": "alive", "service": app.service, "instance": app.instance_id}
        return web.json_response(body, headers=_NO_STORE)

    async def readyz(_request: web.Request) -> web.StreamResponse:
        runtime = app._runtime
        answer: dict[str, Any]
        if runtime is None:
            answer = {"ready": False, "reasons": ["the service is not running"]}
        else:
            answer = await readiness(runtime)
        status = 200 if answer["ready"] else 503
        return web.json_response(answer, status=status, headers=_NO_STORE)

    return {"/healthz": healthz, "/readyz": readyz}


# A probe's answer is about now: no cache in between may keep it.
_NO_STORE = {"Cache-Control": "no-store"}
