"""Shared listeners: the instances of a service share a channel's broadcasts.

With ``@app.listen(channel, shared=True)``, each message on the channel is handled by
one instance of the service; without it, every instance handles every message. As for
requests (:mod:`.instances`), every instance reads every message, claims it (``SET NX``
on a key of its own) for each of its shared listeners, and calls the listener only for
the messages it wins; one instance is preferred for each message, so the load spreads.
An instance that knows of no other claims nothing, as for requests: it only counts the
messages (below), one addition each.

**Naming a broadcast.** A broadcast has no id, and two identical messages (a
``{"status": "ok"}`` heartbeat sent every second) are two messages to handle: a claim
key made of the bytes alone would merge them. What the instances share instead is the
order of the messages: the server sends every subscriber of a channel its messages in
the one order it took them. So the n-th message since a common starting point is the
same message on every instance, and its claim key is a hash of the listener, the
channel (or pattern), the starting point, n, and the message's bytes.

**The starting point** is a sync marker: a message on the service's announcement
channel (:func:`daebus.protocol.instances_channel`) that names the listener channel and
carries a random mark. An instance reads its announcements and its listener channels
on one connection, in the server's order: every instance reading both when a marker is
published reads it at the same point among the channel's messages, and from there all
of them number the messages alike. An instance publishes a marker when it subscribes
to a channel that has a shared listener, and again once its subscriptions are back
after a lost connection. Each marker makes every instance start counting anew, at the
same message; a forged one does just that, which is harmless. A pattern's messages are
numbered as one sequence, whatever channel each came on; its marker names the pattern.

**Out of step.** An instance's count may differ from the others' until it has read a
marker: right after it subscribed, and after a lost connection (it missed messages
meanwhile). It knows so, since it holds no mark, and then calls its shared listeners for
every message without claiming it, until its marker comes back (it asks again, at most
once a second, while it waits). The others may handle the same messages: a message can
be handled twice in that window, about one round trip after a join or a reconnect, but
it is never handled by none. An instance takes a marker as its starting point only if it
surely read the channel when the marker was published: it read the marker after the
server confirmed its subscription, and its connection has not been lost since. Any
other marker is ignored, and the next one brings it in step.

Why not count each message's identical predecessors instead (occurrence numbers
within a time window)? An instance that joined late or reconnected counts fewer; two
instances whose counts are one apart each claim, for one message, the key the other
claims for a neighbouring identical one, and when both lose those races (a lagging
loop, the preferred instance's head start) the message is handled by nobody. With a
common marker, the instances in step agree on every key, and an instance out of step
claims nothing. The bytes stay in the key so that, should counts ever differ, two
different messages still get different keys: handled twice rather than not at all.

A marker that repeats one read while its claims may live
(:data:`.instances.CLAIM_TTL_MS`) is ignored: replayed, it would restart the count
where those claims hold the keys, and every instance would lose the races to them.
Past :data:`_RECENT_MARKS` markers in that time (a flood), new ones are ignored rather
than old ones forgotten: an instance that ignores a marker the others take counts on
apart from them, so its keys differ, and a message may be handled twice, never by
none. Replayed to instances none of which read the first one, while its claims live,
a marker could still make them lose races; whoever can publish on the service's
channels can forge requests too.

**Leaving.** An instance that stops takes no more shared broadcasts once it begins to
leave, before it announces its departure (:meth:`.instances.Instances.leave`): the
others, which count it as running until then, claim every message it might have taken,
and it handles the ones it won before, queued ones included, before it stops. A killed
instance loses the messages it won and had not finished: pub/sub keeps no copy to hand
to another. Messages that must survive an instance's death belong on a durable channel
(``durable=True``, docs/durable.md).

``ordered=True`` with ``shared=True`` is refused (:meth:`daebus.Daebus.add_listener`):
the instances handle a channel's messages side by side, so no order holds across them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from ..transport import Delivery
from .instances import CLAIM_TTL_MS

if TYPE_CHECKING:
    from .._registry import Listener
    from ..transport import Subscription
    from . import ServiceRuntime

__all__ = ["ForListeners", "SharedListeners"]

#: How long an instance waits before claiming a broadcast another instance is preferred
#: for. Longer than for a request (:data:`.instances.DEFER`): broadcasts come in bursts
#: (a fan-out, a backlog read at once), and an instance that reads a burst a little
#: later than the others would otherwise lose its whole share of it.
DEFER = 0.05
#: Seconds an instance out of step waits for its marker before it asks again.
ASK_AGAIN = 1.0
#: How many marks an instance remembers at most (for a claim's lifetime each), to
#: ignore a marker read twice.
_RECENT_MARKS = 10_000


class ForListeners(Delivery):
    """A broadcast to be handled by some of its channel's listeners only."""

    listeners: tuple[Listener, ...]


def for_listeners(delivery: Delivery, listeners: tuple[Listener, ...]) -> ForListeners:
    """``delivery``, for ``listeners`` only."""
    taken = ForListeners(*delivery)
    taken.listeners = listeners
    return taken


class _Count:
    """Where an instance is among one listener subscription's messages."""

    __slots__ = ("asked_at", "generation", "mark", "position", "subscription")

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        # Instances.disconnects when the count was armed: a marker read since is good.
        self.generation = -1
        self.mark: str | None = None  # None: out of step
        self.position = 0
        self.asked_at: float | None = None


class _Roles(NamedTuple):
    """A channel's listeners: the shared ones (with their names) and the others."""

    listeners: tuple[Listener, ...]
    shared: tuple[tuple[Listener, bytes], ...]
    others: tuple[Listener, ...]


class SharedListeners:
    """Counts the messages of the channels with shared listeners, and claims them."""

    def __init__(self, runtime: ServiceRuntime, won: Callable[[Delivery], None]) -> None:
        self.app = runtime.app
        self.loop = runtime.loop
        self.transport = runtime.transport
        self.instances = runtime.instances
        # The runtime's subscriptions, once it has them (see subscribed).
        self._subscriptions: dict[tuple[str, str], Subscription] = {}
        self._runtime = runtime
        self._won = won
        #: Channel or pattern with a shared listener -> its _Count.
        self.counts: dict[str, _Count] = {}
        self._roles: dict[str, _Roles] = {}
        # Mark -> when it was read, oldest first: the marks whose claims may live.
        self._recent: dict[str, float] = {}
        runtime.instances.on_sync = self._on_sync
        runtime.instances.on_receiving = self._rearm_all

    def subscribed(self, name: str) -> None:
        """``name`` is subscribed: count its messages from a marker, if it has to."""
        self._subscriptions = self._runtime.subscriptions
        subscription = self._subscriptions.get(("listener", name))
        if subscription is None or not any(
            listener.shared for listener in self.app._listeners.get(name, ())
        ):
            return
        count = self.counts.get(name)
        if count is None or count.subscription is not subscription:
            count = self.counts[name] = _Count(subscription)
            self._rearm(name, count)

    def in_step(self, name: str) -> bool:
        """Whether this instance numbers ``name``'s messages as the others do."""
        count = self.counts.get(name)
        return (
            count is not None
            and count.mark is not None
            and (count.generation == self.instances.disconnects)
        )

    def sort(self, delivery: Delivery) -> Delivery | None:
        """What to handle of a broadcast now; claims it for its shared listeners.

        Returns ``delivery`` when every listener is to be called now, a
        :class:`ForListeners` for the listeners that are not shared while their shared
        ones are claimed (each one won comes to ``won`` later), or None if nothing is
        to be called now. Called for each message in the order read.
        """
        key = delivery.pattern if delivery.pattern is not None else delivery.channel
        count = self.counts.get(key)
        if count is None:
            return delivery
        if count.subscription is not self._subscriptions.get(("listener", key)):
            del self.counts[key]  # unsubscribed: counted anew once subscribed again
            return delivery
        count.position += 1
        instances = self.instances
        if count.generation != instances.disconnects:
            self._rearm(key, count)
        if not instances.shared:
            return delivery
        roles = self._roles_of(key)
        if roles is None or not roles.shared:
            return delivery
        if instances.leaving:
            return for_listeners(delivery, roles.others) if roles.others else None
        if count.mark is None:
            self._ask(key, count)
            return delivery
        where = repr((key, delivery.channel, count.mark, count.position)).encode()
        hashed = hashlib.blake2b(delivery.data, digest_size=16)
        for listener, name in roles.shared:
            claimed = hashed.copy()
            claimed.update(where)
            claimed.update(name)
            instances.take(
                claimed.digest(),
                "a broadcast",
                delivery.channel,
                self._take,
                delivery,
                listener,
                unclaimed=True,
                defer=DEFER,
            )
        return for_listeners(delivery, roles.others) if roles.others else None

    def _take(self, delivery: Delivery, listener: Listener) -> None:
        self._won(for_listeners(delivery, (listener,)))

    # -- markers ---------------------------------------------------------------------
    def _rearm(self, name: str, count: _Count) -> None:
        """Out of step until the next marker, which is asked for, if one can be read."""
        count.mark = None
        if self.transport.receiving:  # every subscription is back: markers read count
            count.generation = self.instances.disconnects
            count.asked_at = None
            self._ask(name, count)

    def _rearm_all(self) -> None:
        for name, count in list(self.counts.items()):
            if count.generation != self.instances.disconnects:
                self._rearm(name, count)

    def _ask(self, name: str, count: _Count) -> None:
        now = self.loop.time()
        if count.asked_at is None or now - count.asked_at >= ASK_AGAIN:
            count.asked_at = now
            self.instances.mark(name)

    def _on_sync(self, name: str, mark: str) -> None:
        recent = self._recent
        now = self.loop.time()
        forget_before = now - CLAIM_TTL_MS / 1000
        while recent and next(iter(recent.values())) < forget_before:
            del recent[next(iter(recent))]
        if mark in recent or len(recent) >= _RECENT_MARKS:
            return
        recent[mark] = now
        count = self.counts.get(name)
        if (
            count is not None
            and count.generation == self.instances.disconnects
            and count.subscription is self._subscriptions.get(("listener", name))
        ):
            count.mark = mark
            count.position = 0

    def _roles_of(self, key: str) -> _Roles | None:
        listeners = self.app._listeners.get(key)
        if listeners is None:
            return None
        roles = self._roles.get(key)
        if roles is None or roles.listeners is not listeners:
            roles = self._roles[key] = _roles(listeners)
        return roles


def _roles(listeners: tuple[Listener, ...]) -> _Roles:
    """Sort listeners; a shared one is named alike on every instance by its function.

    By its qualified name, not its module's: the module of one file is ``__main__`` run
    as ``python tasks.py`` and ``tasks`` run by ``daebus run tasks:app``, and instances
    started either way must agree.
    """
    shared: list[tuple[Listener, bytes]] = []
    seen: dict[str, int] = {}
    for listener in listeners:
        if not listener.shared:
            continue
        func = listener.func
        name = str(getattr(func, "__qualname__", ""))
        seen[name] = seen.get(name, 0) + 1  # two of one name: told apart by their rank
        shared.append((listener, f"{name}#{seen[name]}".encode("utf-8", "replace")))
    others = tuple(listener for listener in listeners if not listener.shared)
    return _Roles(listeners, tuple(shared), others)
