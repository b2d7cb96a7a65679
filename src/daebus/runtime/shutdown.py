"""Stopping a running service: every request read gets an answer, then all is closed.

Requests being handled finish within the shutdown timeout (then are cancelled, and
answered as stopped); those still waiting for a slot, or read while unsubscribing,
get a busy error reply at once ("stopping"; callers raise ``ServiceBusyError``).
Waiting broadcasts are dropped. The log says how many of each.

An instance that shares its service's requests with others finishes what it took: it
unsubscribes from the service's channels and announces its departure first, so the
others take every later request, then runs the requests it claimed, queued ones
included, before it refuses anything.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import ServiceRuntime

__all__ = ["shut_down"]

# The name the runtime has always logged under: users filter on it.
logger = logging.getLogger("daebus.runtime")


async def shut_down(runtime: ServiceRuntime, timeout: float) -> None:
    """Stop taking messages, drain in-flight work, stop jobs and threads, close."""
    admission, loop, instances = runtime.admission, runtime.loop, runtime.instances
    deadline = loop.time() + timeout
    if instances.shared:
        await _unsubscribe(runtime, ("request", "workflow"))
        await instances.leave()
        await instances.claims_settled(deadline - loop.time())
        # Everything taken runs, queued requests included, within the timeout.
        settled = loop.create_task(admission.settle())
        _done, late = await asyncio.wait({settled}, timeout=max(0.0, deadline - loop.time()))
        for task in late:
            task.cancel()
    admission.stop()
    await _unsubscribe(runtime, ("request", "workflow", "listener"))
    await instances.leave()
    if admission.refused_at_stop or admission.dropped_at_stop:
        logger.warning(
            "stopping: refused %d request(s) unrun and dropped %d broadcast(s) that "
            "had not started",
            admission.refused_at_stop,
            admission.dropped_at_stop,
        )
    runtime.schedules.cancel()
    if admission.jobs:
        # Waited for like a task; a second signal cancels the wait with the tasks.
        waiter = loop.create_task(admission.jobs_done())
        admission.in_flight.add(waiter)
        waiter.add_done_callback(admission.in_flight.discard)
    pending = set(admission.in_flight) | set(runtime.schedules.tasks.values())
    if pending:
        logger.info("waiting for %d in-flight handler(s) to finish", admission.busy)
        _done, still = await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()))
        if still:
            logger.warning(
                "%d handler(s) still running after %.1fs; abandoning them",
                admission.busy,
                timeout,
            )
            for task in still:
                task.cancel()
    app = runtime.app
    await loop.run_in_executor(None, app._join_threads, max(0.1, deadline - loop.time()))
    for hook in list(app._on_stop_handlers):
        await runtime.run_hook(hook, "stop")
    runtime.executor.shutdown(wait=False, cancel_futures=True)
    runtime.job_executor.shutdown(wait=False, cancel_futures=True)
    runtime.transport.remove_batch_end(runtime.broadcasts.start)
    runtime.throttle.flush()


async def _unsubscribe(runtime: ServiceRuntime, kinds: tuple[str, ...]) -> None:
    for key in [key for key in runtime.subscriptions if key[0] in kinds]:
        subscription = runtime.subscriptions.pop(key)
        try:
            await subscription.unsubscribe()
        except Exception as exc:
            logger.debug("unsubscribe %s failed: %s", subscription.name, exc)
