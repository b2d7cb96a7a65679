"""Whether this instance is ready: started, subscribed, not stopping, its checks passing.

Asked three ways, all answered here: the reserved action
:data:`daebus.protocol.HEALTH_ACTION` that every daebus service answers itself (what
``daebus health SERVICE`` and :func:`daebus.registry.service_health` call), and
``/readyz`` on a ``DaebusHttp(health=True)``. ``/healthz`` only says the service's loop
answers.

The user's checks (``@app.health_check``) run side by side, each with the app's
context, ``def`` ones in the job threads (never the handlers' pool, which may be full),
each within :data:`CHECK_TIMEOUT` seconds. A check fails by returning False or by
raising; the reason is then its message. A ``def`` check still running when asked
again is not started again: the probe waits for the run under way.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import context, protocol
from .invoke import SYNC, error_text, kind_of

if TYPE_CHECKING:
    from . import ServiceRuntime

__all__ = ["CHECK_TIMEOUT", "health_action", "readiness"]

#: Seconds a user's check may take before it counts as failed.
CHECK_TIMEOUT = 5.0


async def readiness(runtime: ServiceRuntime) -> dict[str, Any]:
    """``{"ready", "reasons", "checks", "service", "instance", "state"}`` of this instance.

    ``reasons`` says why it is not ready (empty when it is); ``checks`` maps each user
    check to ``"ok"`` or why it failed. Probes that come while the checks run share
    their answer: ``/readyz`` is not behind ``max_concurrent``, and a flood of probes
    must not become a flood of the checks' own queries.
    """
    asked = _asked.get(runtime)
    if asked is None:
        asked = _asked[runtime] = runtime.loop.create_task(_readiness(runtime))
        asked.add_done_callback(lambda _: _asked.pop(runtime, None))
    # Shielded: a probe that gives up (its client left) does not end the others'.
    return dict(await asyncio.shield(asked))


async def _readiness(runtime: ServiceRuntime) -> dict[str, Any]:
    reasons: list[str] = []
    if runtime.stopping or not runtime.app.is_running():
        state = "stopping"
        reasons.append("the service is stopping")
    elif not runtime.started:
        state = "starting"
        reasons.append("the service is starting")
    else:
        state = "running"
    if not runtime.transport.receiving:
        reasons.append("not subscribed: the connection to Redis is being made again")
    checks = dict(runtime.app.health_checks)
    results = await asyncio.gather(*(_run(runtime, name, func) for name, func in checks.items()))
    outcome: dict[str, str] = {}
    for name, failure in zip(checks, results, strict=True):
        outcome[name] = "ok" if failure is None else failure
        if failure is not None:
            reasons.append(f"check {name!r} failed: {failure}")
    return {
        "service": runtime.service,
        "instance": runtime.instances.id,
        "ready": not reasons,
        "state": state,
        "reasons": reasons,
        "checks": outcome,
    }


async def _run(runtime: ServiceRuntime, name: str, func: Callable[..., Any]) -> str | None:
    """Why the check failed, or None if it passed.

    The check runs in a task of its own, waited for rather than awaited: whatever it
    raises, a ``CancelledError`` of its own included, is its failure, never the probe's.
    """
    if kind_of(func) is SYNC:
        run = _in_thread(runtime, name, func)
    else:
        ctx = context.MessageContext(runtime.app)
        run = runtime.loop.create_task(runtime.invoke(func, ctx, (), executor=runtime.job_executor))
        run.add_done_callback(_retrieve)
    try:
        done, _ = await asyncio.wait({run}, timeout=CHECK_TIMEOUT)
    finally:
        # A thread cannot be stopped: a def check's run goes on, for the next probe.
        if kind_of(func) is not SYNC and not run.done():
            run.cancel()
    if not done:
        return f"no answer within {CHECK_TIMEOUT:g} s"
    if run.cancelled():
        return "cancelled"
    failure = run.exception()
    if failure is not None:
        return protocol.shorten(error_text(failure), 500)
    return "returned False" if run.result() is False else None


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a check's failure as seen: its probe may have stopped waiting for it."""
    if not task.cancelled():
        task.exception()


def _in_thread(runtime: ServiceRuntime, name: str, func: Callable[..., Any]) -> asyncio.Task[Any]:
    """The run of ``def`` check ``name``: the one under way, else a new one.

    A hung check holds a job thread until it returns: started again at every probe, it
    would take every thread from the service's ``def`` jobs and stop hooks.
    """
    running = _running.setdefault(runtime, {})
    run = running.get(name)
    if run is None:
        ctx = context.MessageContext(runtime.app)
        run = running[name] = runtime.loop.create_task(
            runtime.invoke(func, ctx, (), executor=runtime.job_executor)
        )

        def finished(task: asyncio.Task[Any]) -> None:
            running.pop(name, None)
            _retrieve(task)

        run.add_done_callback(finished)
    return run


# Each running service's readiness being found out (see readiness).
_asked: weakref.WeakKeyDictionary[ServiceRuntime, asyncio.Task[dict[str, Any]]] = (
    weakref.WeakKeyDictionary()
)
# The runs of each running service's def checks under way, by name (see _in_thread).
_running: weakref.WeakKeyDictionary[ServiceRuntime, dict[str, asyncio.Task[Any]]] = (
    weakref.WeakKeyDictionary()
)


def health_action(runtime: ServiceRuntime) -> Callable[[], Any]:
    """The handler of :data:`~daebus.protocol.HEALTH_ACTION` for ``runtime``."""

    async def health() -> dict[str, Any]:
        return await readiness(runtime)

    return health
