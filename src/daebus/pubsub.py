"""The request, response and broadcast objects of pub/sub messages (0.0.31's classes)."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, cast

from . import encoding, protocol
from ._flow import flow, published, sent_reply
from ._standalone import standalone_publisher
from .exceptions import MessageTooLargeError
from .transport._replicas import (
    DEFAULT_REPLICA_TIMEOUT_MS,
    check_acknowledged,
    check_replicas,
    wait_command,
)

if TYPE_CHECKING:
    import redis

    from .app import Daebus
    from .tracing import Tracing

__all__ = [
    "PubSubBroadcast",
    "PubSubRequest",
    "PubSubResponse",
    "Publisher",
    "ReceiverCounts",
    "Receivers",
]

#: The default limit on one encoded message, in bytes (requests, replies, broadcasts).
DEFAULT_MAX_MESSAGE_SIZE = 8 * 1024 * 1024

#: What a reply or a broadcast gives back: how many subscribers received it. In a plain
#: ``def`` handler (or outside any service) the count itself, as the publish is done;
#: on the service's event loop (an ``async def`` handler) a future of it, which may be
#: awaited to wait for the publish, or left alone: publishes go out in call order.
Receivers: TypeAlias = "int | asyncio.Future[int]"
#: What ``broadcast.send_many()`` gives back: a count per message, or a future of them.
ReceiverCounts: TypeAlias = "list[int] | asyncio.Future[list[int]]"

_UNSET: Any = object()


class Publisher(Protocol):
    """Anything with redis-py's ``publish(channel, data)``."""

    def publish(self, channel: str, data: bytes) -> Any:
        """Publish ``data``; the result is the receiver count (or an awaitable of it)."""


class PubSubRequest:
    """A request (or broadcast) received over pub/sub.

    Attributes:
        raw: the whole decoded message.
        payload: the request's payload (see :func:`daebus.protocol.request_payload`).
        reply_to, request_id, service, action: the envelope fields, None when absent.
        channel: the channel it arrived on; pattern: the glob that matched, if any.
    """

    def __init__(self, data: str | bytes | dict[str, Any]) -> None:
        if isinstance(data, str | bytes):
            data = protocol.decode_object(data)
        elif not isinstance(data, dict):
            raise TypeError(f"a request must be a dict or JSON text, not {type(data).__name__}")
        self.raw: Any = data
        self.payload: Any = protocol.request_payload(data)
        # Any: it comes off the wire unchecked; dispatch refuses a non-string one.
        self.reply_to: Any = data.get("reply_to") or None
        self.request_id: Any = data.get("request_id")
        self.service: Any = data.get("service")
        self.action: Any = data.get("action")
        self.channel: str | None = None
        self.pattern: str | None = None
        #: A durable message's stream id, and how many times its group has had it
        #: handed out, this time included (None and 0 for other messages).
        self.message_id: str | None = None
        self.delivery_count = 0
        self._reply_channel: Any = _UNSET

    @classmethod
    def from_broadcast(cls, value: Any, channel: str, pattern: str | None) -> PubSubRequest:
        """A request for a listener: ``payload`` is the message itself if it is not a dict."""
        if isinstance(value, dict):
            self = cls(value)
        else:
            self = cls({})
            self.raw = self.payload = value
        self.channel = channel
        self.pattern = pattern
        return self

    @property
    def reply_channel(self) -> str | None:
        """Where replies go: ``reply_to``, else ``<service>.responses``; None: nowhere.

        A running service sets it from :class:`daebus.protocol.ReplyChannels`, which
        allows only channels that look like reply channels.
        """
        channel = self._reply_channel
        if channel is not _UNSET:
            return channel  # type: ignore[no-any-return]
        reply_to = self.reply_to
        if reply_to:
            return reply_to if type(reply_to) is str else None
        return protocol.fallback_reply_channel(self.service)

    @reply_channel.setter
    def reply_channel(self, channel: str | None) -> None:
        self._reply_channel = channel

    def __repr__(self) -> str:
        return f"<PubSubRequest service={self.service!r} request_id={self.request_id!r}>"


class PubSubResponse:
    """Answers one request: ``send``/``success``, ``progress`` and ``error``.

    In a plain ``def`` handler each call publishes before it returns and gives the
    receiver count. In an ``async def`` handler it returns an awaitable of that count;
    the publishes happen in call order whether or not they are awaited.
    """

    def __init__(
        self,
        publisher: Publisher | redis.Redis,
        request: PubSubRequest,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self.publisher = publisher
        self.request = request
        self.max_message_size = max_message_size
        #: True once a final reply went out; later replies are still sent but ignored.
        self.final_sent = False
        self.sent = 0
        self._last: asyncio.Future[int] | None = None

    def send(self, payload: Any, final: bool = True) -> Receivers:
        """Reply with ``status: "success"``; ``final=False`` marks one part of a stream."""
        return self._send(protocol.STATUS_SUCCESS, payload, final)

    def success(self, payload: Any, final: bool = True, **_ignored: Any) -> Receivers:
        """Alias of :meth:`send` (0.0.31's proxy had it; its class did not)."""
        return self._send(protocol.STATUS_SUCCESS, payload, final)

    def error(self, err: Any, final: bool = True) -> Receivers:
        """Reply with ``status: "error"`` and ``payload: {"error": str(err)}``."""
        return self._send(protocol.STATUS_ERROR, protocol.error_payload(err), final)

    def progress(self, payload: Any, progress_percentage: float | None = None) -> Receivers:
        """Send a non-final part; a percentage is clamped to 0..100 and added to it."""
        payload = protocol.progress_payload(payload, progress_percentage)
        return self._send(protocol.STATUS_SUCCESS, payload, False)

    def _send(self, status: str, payload: Any, final: bool, *, detached: bool = False) -> Receivers:
        """Publish one reply.

        ``detached`` is for the runtime's own final reply: a publisher that can sends
        it without waiting for the receiver count, and 0 is returned.
        """
        data = protocol.encode_reply(status, payload, self.request.request_id, final)
        if len(data) > self.max_message_size:
            raise MessageTooLargeError(
                f"reply of {len(data)} bytes is over the {self.max_message_size}-byte limit"
            )
        channel = self.request.reply_channel
        if flow.isEnabledFor(logging.DEBUG):
            sent_reply(channel, status, self.request.request_id, final, data)
        # The publisher's result is the count or a future of it (the Publisher protocol).
        result: Receivers
        if channel is None:  # no reply channel, or one the service may not send to
            nowhere = getattr(self.publisher, "nowhere", None)
            result = nowhere() if nowhere is not None else 0
        elif detached and hasattr(self.publisher, "publish_detached"):
            self.publisher.publish_detached(channel, data)
            result = 0  # not counted: nobody reads the count of the runtime's final reply
        else:
            result = self.publisher.publish(channel, data)
        self.sent += 1
        if final:
            self.final_sent = True
        if asyncio.isfuture(result):
            self._last = result
        return result

    async def flush(self) -> None:
        """Wait until every reply sent from async code has been published.

        Replies are published in order, so waiting for the last one is enough.
        """
        if self._last is not None:
            await asyncio.shield(self._last)

    def __repr__(self) -> str:
        return f"<PubSubResponse to {self.request.reply_channel!r}>"


class PubSubBroadcast:
    """Publishes any JSON value to any channel: ``send(channel, data) -> receiver count``."""

    #: The app's tracing, once it enables it: each message sent gets a PRODUCER span.
    tracing: Tracing | None = None

    def __init__(
        self,
        custom_redis_client: Publisher | redis.Redis | None = None,
        *,
        app: Daebus | None = None,
    ) -> None:
        self._client = custom_redis_client
        self._app = app

    def _publisher(self) -> Publisher | redis.Redis:
        if self._client is not None:
            return self._client
        if self._app is not None:
            publisher: Publisher = self._app._publisher()
            return publisher
        return standalone_publisher()

    def send(
        self,
        channel: str,
        payload: Any,
        *,
        durable: bool = False,
        maxlen: int = protocol.DEFAULT_STREAM_MAXLEN,
        max_age: float | None = None,
        replicas: int = 0,
        replica_timeout: float = DEFAULT_REPLICA_TIMEOUT_MS / 1000,
    ) -> Any:
        """Publish ``payload`` as JSON on ``channel``; returns the receiver count.

        With ``durable=True`` it is appended to the channel's stream instead, for the
        durable listeners of ``channel`` (see docs/durable.md); returns the message's id
        (a future of it on the service's loop). The stream keeps about its last
        ``maxlen`` messages and, with ``max_age``, none much older than that many
        seconds (by the server's clock): both are trimmed as messages are added.

        With ``replicas=n`` (durable only), the send returns once ``n`` replicas of the
        stream's master have the message too (``WAIT``), so that it survives the
        master's failover; if fewer have it after ``replica_timeout`` seconds, it raises
        :class:`~daebus.ReplicationError` (the master has the message all the same).

        Raises:
            ValueError: ``channel`` is empty or not a string; ``maxlen`` or ``max_age``
                is not a positive number, or ``max_age`` or ``replicas`` is given
                without ``durable``.
            SerializationError: ``payload`` cannot be encoded.
            ReplicationError: fewer than ``replicas`` replicas acknowledged it in time.
        """
        if not isinstance(channel, str) or not channel:
            raise ValueError("channel must be a non-empty string")
        max_age_ms = _retention_ms(max_age, durable)
        replication = _replication(replicas, replica_timeout, durable)
        data = encoding.dumps(payload)
        published(channel, data, durable)
        if self.tracing is not None:
            with self.tracing.publish(channel, durable) as sending:
                return self._send(
                    channel, data, durable, maxlen, max_age_ms, sending.headers, replication
                )
        return self._send(channel, data, durable, maxlen, max_age_ms, None, replication)

    def _send(
        self,
        channel: str,
        data: bytes,
        durable: bool,
        maxlen: int,
        max_age_ms: int | None,
        trace: dict[str, str] | None = None,
        replication: dict[str, int] | None = None,
    ) -> Any:
        if durable:
            return self._append(channel, data, maxlen, max_age_ms, trace, replication)
        # The count or a future of it, as the Publisher protocol says.
        receivers: Receivers = self._publisher().publish(channel, data)
        return receivers

    def _append(
        self,
        channel: str,
        data: bytes,
        maxlen: int,
        max_age_ms: int | None,
        trace: dict[str, str] | None = None,
        replication: dict[str, int] | None = None,
    ) -> Any:
        if not isinstance(maxlen, int) or isinstance(maxlen, bool) or maxlen < 1:
            raise ValueError(f"maxlen must be a positive int, got {maxlen!r}")
        stream = protocol.stream_key(channel)
        fields = _entry_fields(data, trace)
        replication = replication or {}
        if self._client is not None:
            return _append_with_client(
                self._client, stream, fields, maxlen, max_age_ms, **replication
            )
        # Both publishers have stream_add: the runtime's, or the one outside any app.
        publisher = self._app._publisher() if self._app is not None else standalone_publisher()
        return cast("_StreamPublisher", publisher).stream_add(
            stream, fields, maxlen, max_age_ms, **replication
        )

    def _append_many(
        self,
        messages: Iterable[tuple[str, Any]],
        maxlen: int,
        max_age_ms: int | None,
        trace: dict[str, str] | None = None,
        replication: dict[str, int] | None = None,
    ) -> Any:
        """The durable :meth:`send_many`: one round trip for the batch where it can."""
        replication = replication or {}
        if self._client is not None:
            sent = []
            for channel, payload in messages:
                data = encoding.dumps(payload)
                published(channel, data, True)
                sent.append(self._append(channel, data, maxlen, max_age_ms, trace, replication))
            return sent
        if not isinstance(maxlen, int) or isinstance(maxlen, bool) or maxlen < 1:
            raise ValueError(f"maxlen must be a positive int, got {maxlen!r}")
        entries = []
        for channel, payload in messages:
            if not isinstance(channel, str) or not channel:
                raise ValueError("channel must be a non-empty string")
            data = encoding.dumps(payload)
            published(channel, data, True)
            entries.append((protocol.stream_key(channel), _entry_fields(data, trace)))
        publisher = self._app._publisher() if self._app is not None else standalone_publisher()
        return cast("_StreamPublisher", publisher).stream_add_many(
            entries, maxlen, max_age_ms, **replication
        )

    def send_many(
        self,
        messages: Iterable[tuple[str, Any]],
        *,
        durable: bool = False,
        maxlen: int = protocol.DEFAULT_STREAM_MAXLEN,
        max_age: float | None = None,
        replicas: int = 0,
        replica_timeout: float = DEFAULT_REPLICA_TIMEOUT_MS / 1000,
    ) -> Any:
        """Publish many ``(channel, payload)`` pairs in one round trip; returns the counts.

        With ``durable=True`` each is appended to its channel's stream (see
        :meth:`send`, which ``maxlen``, ``max_age``, ``replicas`` and
        ``replica_timeout`` are for) and their ids are returned instead. With
        ``replicas``, :class:`~daebus.ReplicationError` says that some of the batch
        (maybe all) is on its master only.
        """
        max_age_ms = _retention_ms(max_age, durable)  # refused before anything is sent
        replication = _replication(replicas, replica_timeout, durable)
        if self.tracing is not None:
            messages = list(messages)
            channels = {channel for channel, _ in messages if isinstance(channel, str)}
            name = str(channels.pop()) if len(channels) == 1 else "(several channels)"
            with self.tracing.publish(name, durable, len(messages)) as sending:
                return self._send_many(
                    messages, durable, maxlen, max_age_ms, sending.headers, replication
                )
        return self._send_many(messages, durable, maxlen, max_age_ms, None, replication)

    def _send_many(
        self,
        messages: Iterable[tuple[str, Any]],
        durable: bool,
        maxlen: int,
        max_age_ms: int | None,
        trace: dict[str, str] | None = None,
        replication: dict[str, int] | None = None,
    ) -> Any:
        if durable:
            return self._append_many(messages, maxlen, max_age_ms, trace, replication)
        encoded = [(channel, encoding.dumps(payload)) for channel, payload in messages]
        for channel, data in encoded:
            published(channel, data, False)
        if self._client is None:
            if self._app is not None:
                return self._app._publish_many(encoded)
            return standalone_publisher().publish_many(encoded)
        pipe = self._client.pipeline(transaction=False)  # type: ignore[union-attr]
        for channel, data in encoded:
            pipe.publish(channel, data)
        return [int(n) for n in pipe.execute()]

    def __repr__(self) -> str:
        return f"<PubSubBroadcast app={self._app!r}>"


class _StreamPublisher(Protocol):
    def stream_add(
        self,
        stream: str,
        fields: dict[str, bytes],
        maxlen: int,
        max_age_ms: int | None,
        **replication: int,
    ) -> Any: ...

    def stream_add_many(
        self,
        entries: list[tuple[str, dict[str, bytes]]],
        maxlen: int,
        max_age_ms: int | None,
        **replication: int,
    ) -> Any: ...


def _entry_fields(data: bytes, trace: dict[str, str] | None) -> dict[str, bytes]:
    """A durable message's stream entry: its JSON, and the sender's trace context if any."""
    fields = {protocol.STREAM_DATA_FIELD: data}
    if trace:
        for key in protocol.TRACE_KEYS:
            value = trace.get(key)
            if value:
                fields[key] = value.encode()
    return fields


def _retention_ms(max_age: Any, durable: bool) -> int | None:
    """``max_age`` (seconds) in whole ms, at least 1; None for no age limit."""
    if max_age is None:
        return None
    if (
        not isinstance(max_age, int | float)
        or isinstance(max_age, bool)
        or not math.isfinite(max_age)
        or max_age <= 0
    ):
        raise ValueError(f"max_age must be a positive number of seconds, got {max_age!r}")
    if not durable:
        raise ValueError("max_age applies to durable messages: pass durable=True")
    return max(1, math.ceil(max_age * 1000))


def _replication(replicas: Any, replica_timeout: Any, durable: bool) -> dict[str, int]:
    """The transport's options for ``replicas`` acknowledgements: none for 0.

    Raises:
        ValueError: a count or timeout WAIT cannot take, or replicas without ``durable``.
    """
    if replicas == 0 and not isinstance(replicas, bool):
        return {}
    if not isinstance(replica_timeout, int | float) or isinstance(replica_timeout, bool):
        raise ValueError(f"replica_timeout must be a number of seconds, got {replica_timeout!r}")
    if not math.isfinite(replica_timeout):
        raise ValueError(f"replica_timeout must be finite, got {replica_timeout!r}")
    timeout_ms = max(1, math.ceil(replica_timeout * 1000)) if replica_timeout > 0 else 0
    check_replicas(replicas, timeout_ms)
    if not durable:
        raise ValueError("replicas applies to durable messages: pass durable=True")
    return {"replicas": replicas, "replica_timeout_ms": timeout_ms}


def _append_with_client(
    client: Any,
    stream: str,
    fields: dict[str, bytes],
    maxlen: int,
    max_age_ms: int | None,
    replicas: int = 0,
    replica_timeout_ms: int = DEFAULT_REPLICA_TIMEOUT_MS,
) -> str:
    """``XADD`` with a redis-py client; for an age, ``XTRIM MINID`` from the new id.

    The new id is the server's time: trimming from it needs no clock of ours. With
    ``replicas``, ``WAIT`` follows the ``XADD`` in a pipeline: on its connection.
    """
    if replicas:
        pipeline = client.pipeline(transaction=False)
        pipeline.xadd(stream, fields, maxlen=maxlen, approximate=True)
        pipeline.execute_command(*wait_command(replicas, replica_timeout_ms))
        added, acknowledged = pipeline.execute()
        check_acknowledged(acknowledged, replicas, replica_timeout_ms, repr(stream))
    else:
        added = client.xadd(stream, fields, maxlen=maxlen, approximate=True)
    entry_id: str = added.decode() if isinstance(added, bytes) else added
    if max_age_ms is not None:
        added_ms = int(entry_id.partition("-")[0])
        client.xtrim(stream, minid=added_ms - max_age_ms, approximate=True)
    return entry_id


def standalone_broadcast() -> PubSubBroadcast:
    """``broadcast`` for code running outside any app."""
    return PubSubBroadcast()
