"""Publishing for a running service: from the loop, from workers, and its failures.

On the loop a publish is queued on the transport and gives a future of the receiver
count; elsewhere (a worker thread, a thread task) it blocks until the server answers.
A failed publish is logged here, at most once a period, since every publish fails
alike while the server is away.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from typing import TYPE_CHECKING, Any

from ..protocol import shorten

if TYPE_CHECKING:
    from . import ServiceRuntime
    from .throttle import LogThrottle

__all__ = ["Publisher"]


class Publisher:
    """``publish(channel, data)`` for the app: ordered futures on the loop, blocking elsewhere.

    ``kind`` (``"broadcast"`` or ``"reply"``) is what its publishes are counted as,
    while metrics are on; appends to a stream count as ``"durable"``.
    """

    def __init__(self, runtime: ServiceRuntime, kind: str = "broadcast") -> None:
        self._runtime = runtime
        self.kind = kind
        # getattr: a publisher may be made for a context alone, without a runtime.
        self._metrics = getattr(runtime, "metrics", None)

    def publish(self, channel: str, data: bytes) -> Any:
        """Publish; on the loop returns a future of the receiver count, elsewhere the count."""
        runtime = self._runtime
        if self._metrics is not None:
            self._metrics.published(self.kind)
        if threading.get_ident() == runtime.loop_thread:
            future = runtime.transport.publish_nowait(channel, data)
            future.add_done_callback(functools.partial(_report_failure, runtime.throttle, channel))
            return future
        return runtime.transport.publish_blocking(channel, data)

    def stream_add(
        self,
        stream: str,
        fields: dict[str, bytes],
        maxlen: int,
        max_age_ms: int | None,
        **replication: int,
    ) -> Any:
        """Append to a stream (a durable send); on the loop a future of the id, elsewhere the id.

        ``replication`` (``replicas``, ``replica_timeout_ms``) goes to the transport.
        """
        runtime = self._runtime
        if self._metrics is not None:
            self._metrics.published("durable")
        if threading.get_ident() == runtime.loop_thread:
            future = asyncio.ensure_future(
                runtime.transport.stream_add(
                    stream, fields, maxlen, max_age_ms=max_age_ms, **replication
                )
            )
            future.add_done_callback(functools.partial(_report_failure, runtime.throttle, stream))
            return future
        return runtime.transport.stream_add_blocking(
            stream, fields, maxlen, max_age_ms=max_age_ms, **replication
        )

    def stream_add_many(
        self,
        entries: list[tuple[str, dict[str, bytes]]],
        maxlen: int,
        max_age_ms: int | None,
        **replication: int,
    ) -> Any:
        """Append many entries: on the loop a future of their ids, elsewhere the ids.

        On the loop each is a command of its own, written with the others in one go;
        from a thread they go in one round trip on the thread's connection.
        """
        runtime = self._runtime
        if threading.get_ident() == runtime.loop_thread:
            return asyncio.gather(
                *(
                    self.stream_add(stream, fields, maxlen, max_age_ms, **replication)
                    for stream, fields in entries
                )
            )
        if self._metrics is not None:
            self._metrics.published("durable", len(entries))
        return runtime.transport.stream_add_many_blocking(
            entries, maxlen, max_age_ms=max_age_ms, **replication
        )

    def publish_detached(self, channel: str, data: bytes) -> None:
        """Publish without waiting for the receiver count (a worker's final reply).

        Alone, a worker sends it at once on its thread's connection. While other
        ``def`` actions run, it hands it to the loop instead, which writes the replies
        of every worker in one go: one system call and one read by the server for many.
        Whatever the worker published before on its own connection has been answered
        by then, so the parts of a stream still arrive before their final reply.
        """
        runtime = self._runtime
        if threading.get_ident() == runtime.loop_thread:
            self.publish(channel, data)
            return
        if self._metrics is not None:
            self._metrics.published(self.kind)
        if runtime.admission.jobs > 1:
            try:
                runtime.inbox.call_soon(self._publish_handed_over, channel, data)
                return
            except RuntimeError:  # the loop is closed: send it from here
                pass
        runtime.transport.publish_detached(channel, data)

    def nowhere(self) -> Any:
        """What a reply to no channel gives: no receivers (a future of 0 on the loop)."""
        runtime = self._runtime
        if threading.get_ident() == runtime.loop_thread:
            future: asyncio.Future[int] = runtime.loop.create_future()
            future.set_result(0)
            return future
        return 0

    def _publish_handed_over(self, channel: str, data: bytes) -> None:
        runtime = self._runtime
        runtime.transport.publish_then(
            channel, data, functools.partial(_log_if_failed, runtime.throttle, channel)
        )


def _report_failure(throttle: LogThrottle, channel: str, future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        _log_if_failed(throttle, channel, future.exception())


def _log_if_failed(throttle: LogThrottle, channel: str, outcome: Any) -> None:
    if isinstance(outcome, BaseException):
        # Every publish fails alike while the server is away: one line per period.
        throttle.log(
            logging.WARNING, "publish", "publish to %r failed: %s", shorten(channel), outcome
        )
