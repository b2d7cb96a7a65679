"""The baseline: a bare request/reply loop written with plain redis-py (and hiredis).

Wire format (the bench's own, not daebus's): a request is
``{"id": n, "reply_to": channel, "action": name, "payload": ...}`` published on the
responder's channel; a reply is ``{"id": n, "payload": ..., "final": bool}`` published
on the caller's ``reply_to`` channel. JSON is the standard library's, as a hand-written
loop would have it.

- :func:`responder_main`: SUBSCRIBE, and for each request PUBLISH the reply (for
  ``"stream"``, ``parts`` non-final replies then a final one), one message at a time.
- :class:`BareCaller`: one caller, one thread. One long-lived pub/sub connection on a
  per-caller reply channel; a call PUBLISHes, then blocks reading that connection
  until the reply with its id arrives. The fastest simple way.
- :class:`BareSharedCaller`: the same shared by many threads. Each thread PUBLISHes on
  its own pooled connection; one reader thread reads the reply channel and hands each
  reply to the thread waiting for its id (a ``queue.SimpleQueue`` per call).
- :func:`listener_main`: SUBSCRIBE to a broadcast channel, count and check order.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import redis
from _common import STREAM_PARTS, Tally, pubsub_of


def _subscribe(client: redis.Redis, channel: str) -> Any:
    """A pub/sub connection subscribed to ``channel``, confirmation read."""
    pubsub = pubsub_of(client)
    pubsub.subscribe(channel)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1.0)
        if message is not None and message["type"] == "subscribe":
            return pubsub
    raise TimeoutError(f"no confirmation of SUBSCRIBE {channel}")


def responder_main(url: str, channel: str) -> None:
    """The bare service: answer each request on ``channel``, in arrival order."""
    client = redis.Redis.from_url(url)
    pubsub = _subscribe(client, channel)
    publish, dumps, loads = client.publish, json.dumps, json.loads
    for message in pubsub.listen():
        if message["type"] != "message":
            continue
        request = loads(message["data"])
        reply_to, request_id, payload = request["reply_to"], request["id"], request["payload"]
        if request.get("action") == "stream":
            for part in range(int(payload.get("parts", STREAM_PARTS))):
                reply = {"id": request_id, "payload": {"part": part}, "final": False}
                publish(reply_to, dumps(reply))
            publish(reply_to, dumps({"id": request_id, "payload": {"done": True}, "final": True}))
        else:
            publish(reply_to, dumps({"id": request_id, "payload": payload, "final": True}))


def listener_main(url: str, channel: str) -> None:
    """A bare broadcast listener: tally ``{"run", "seq"}`` messages.

    ``{"report": run, "reply_to": channel}`` on the same channel asks for the tally of a
    run; it is answered on ``reply_to`` after every message published before it.
    """
    client = redis.Redis.from_url(url)
    pubsub = _subscribe(client, channel)
    tally = Tally()
    loads = json.loads
    for message in pubsub.listen():
        if message["type"] != "message":
            continue
        data = loads(message["data"])
        if "report" in data:
            report = {**tally.report(data["report"]), "pid": os.getpid()}
            client.publish(data["reply_to"], json.dumps(report))
        else:
            tally.add(data)


class BareCaller:
    """One thread's caller: PUBLISH, then read our reply channel until our reply comes."""

    def __init__(self, url: str, channel: str) -> None:
        self.channel = channel
        self.client = redis.Redis.from_url(url)
        self.reply_channel = f"bench.bare.reply:{uuid.uuid4()}"
        self.pubsub = _subscribe(self.client, self.reply_channel)
        self._ids = itertools.count(1)

    def _replies(self, request: dict[str, Any], timeout: float) -> Iterator[dict[str, Any]]:
        request_id = request["id"]
        self.client.publish(self.channel, json.dumps(request))
        deadline = time.monotonic() + timeout
        while True:
            message = self.pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
            if message is None:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"no reply to request {request_id} in {timeout}s")
                continue
            if message["type"] != "message":
                continue
            reply = json.loads(message["data"])
            if reply["id"] != request_id:
                continue  # a late reply to an earlier, timed-out call
            yield reply
            if reply["final"]:
                return

    def call(self, payload: Any, action: str = "echo", timeout: float = 5.0) -> Any:
        request = {
            "id": next(self._ids),
            "reply_to": self.reply_channel,
            "action": action,
            "payload": payload,
        }
        for reply in self._replies(request, timeout):
            if reply["final"]:
                return reply["payload"]
        raise AssertionError("unreachable")

    def stream(self, parts: int, timeout: float = 5.0) -> list[Any]:
        request = {
            "id": next(self._ids),
            "reply_to": self.reply_channel,
            "action": "stream",
            "payload": {"parts": parts},
        }
        return [reply["payload"] for reply in self._replies(request, timeout)]

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


class BareSharedCaller:
    """A caller shared by threads: a reader thread routes replies to waiters by id."""

    def __init__(self, url: str, channel: str) -> None:
        self.channel = channel
        self.client = redis.Redis.from_url(url)  # its pool gives each thread a connection
        self.reply_channel = f"bench.bare.reply:{uuid.uuid4()}"
        self.pubsub = _subscribe(self.client, self.reply_channel)
        self._ids = itertools.count(1)
        self._waiting: dict[int, queue.SimpleQueue[Any]] = {}
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, name="bare-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        loads, waiting = json.loads, self._waiting
        while not self._closed.is_set():
            try:
                message = self.pubsub.get_message(timeout=0.5)
            except (redis.RedisError, OSError, ValueError):
                if self._closed.is_set():
                    return
                raise
            if message is None or message["type"] != "message":
                continue
            reply = loads(message["data"])
            sink = waiting.get(reply["id"])
            if sink is not None:
                sink.put(reply["payload"])

    def call(self, payload: Any, action: str = "echo", timeout: float = 5.0) -> Any:
        request_id = next(self._ids)
        sink: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._waiting[request_id] = sink
        try:
            request = {
                "id": request_id,
                "reply_to": self.reply_channel,
                "action": action,
                "payload": payload,
            }
            self.client.publish(self.channel, json.dumps(request))
            try:
                return sink.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no reply to request {request_id} in {timeout}s") from None
        finally:
            del self._waiting[request_id]

    def close(self) -> None:
        self._closed.set()
        self._reader.join(2)
        self.pubsub.close()
        self.client.close()


class PerThreadCallers:
    """``count`` bare callers; each thread that calls gets one of its own.

    What 32 hand-written loops would be if each thread had its own caller (its own
    connections) instead of sharing one. The callers are made up front and handed out
    in turn, so any ``count`` threads alive at once never share one.
    """

    def __init__(self, url: str, channel: str, count: int) -> None:
        self._callers = [BareCaller(url, channel) for _ in range(count)]
        self._turn = itertools.cycle(self._callers)
        self._lock = threading.Lock()
        self._mine = threading.local()

    def call(self, payload: Any, action: str = "echo", timeout: float = 5.0) -> Any:
        caller: BareCaller | None = getattr(self._mine, "caller", None)
        if caller is None:
            with self._lock:
                caller = self._mine.caller = next(self._turn)
        return caller.call(payload, action, timeout)

    def close(self) -> None:
        for caller in self._callers:
            caller.close()


def idle_caller_main(url: str, channel: str, ready: str) -> None:
    """A bare caller that makes one call, says it is ready, then waits for replies."""
    caller = BareCaller(url, channel)
    caller.call({"hello": "idle"})
    with open(ready, "w") as marker:
        marker.write("ready\n")
    while True:  # blocks in a socket read; nothing arrives while idle
        caller.pubsub.get_message(timeout=None)
