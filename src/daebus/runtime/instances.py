"""The instances of one service: who else runs it, and which instance runs a request.

Every instance subscribes to the service's channel and gets every request. While it
knows of no other instance, it runs each request as a lone service always has, with no
extra round trip. Once it knows of others, it first claims each request (an atomic
``SET NX PX`` of a key made of the service and a hash of the request's bytes,
:func:`daebus.protocol.claim_key`) and runs only those it wins: each request runs once,
on the instance that claimed it first. Each request has one preferred instance among
those known (picked by its hash): that one claims at once, the others only
:data:`DEFER` seconds later, so the load spreads evenly, and an instance that lags or
has died loses its share to the others instead of holding it up.

Instances know of each other through a record and a channel (:mod:`daebus.protocol`
names both): each one renews its entry in the record every :data:`RENEW_EVERY` seconds,
scored with its expiry on the server's clock, and announces its arrival and departure
on the channel. An instance that stops removes its entry at once; a killed one's
expires. The others run alone again at once when the last other instance left with a
word, and go on claiming for :data:`CLAIM_TTL_MS` when its entry expired: an instance
whose entry expired because it was frozen (SIGSTOP, a suspended machine), not killed,
finds the claims of what ran meanwhile when it thaws, and runs none of it again.

No request runs twice when an instance arrives: it subscribes to the announcements,
writes itself into the record and reads it, announces itself, and only then subscribes
to the service's channel, so every request it can get was published after its
announcement. An instance already running reads announcements and requests on one
connection, in the order the server took them: it knows of the newcomer before any
request they both get. Of two instances starting together, the second to write reads
the first in the record, and the first either reads the second there too or gets its
announcement (it subscribed before writing). An instance that leaves unsubscribes from
the service's channel before it announces its departure, so the others claim every
request it might still get. A lost subscriber connection may miss announcements: the
instance claims everything until a renewal made once it is subscribed again says it
is alone.

A request is known by its bytes: two identical requests within :data:`CLAIM_TTL_MS`
(only possible for requests without a ``request_id``) run once when instances share.

Shared listeners claim the same way, through :meth:`Instances.take`; how they tell
identical broadcasts apart, with the sync markers this channel carries too, is
:mod:`.shared_listeners`'s to say.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import heapq
import itertools
import logging
import os
import re
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import encoding, protocol
from ..exceptions import TransportError

if TYPE_CHECKING:
    from ..transport import Delivery, Subscription
    from . import ServiceRuntime

__all__ = ["CLAIM_TTL_MS", "DEFER", "EXPIRY_MS", "RENEW_EVERY", "Instances", "new_instance_id"]

# The name the runtime has always logged under: users filter on it.
logger = logging.getLogger("daebus.runtime")

#: Seconds between two renewals of an instance's entry in the record.
RENEW_EVERY = 15.0
#: How long an entry lives unrenewed: a killed instance is forgotten after this.
EXPIRY_MS = 45_000
#: How long a claim is held: longer than any instance takes to read a request. An
#: instance frozen for longer (SIGSTOP, a suspended machine) may, once it runs again,
#: run requests from before the freeze that another instance has run already.
CLAIM_TTL_MS = 120_000
#: The most instances of one service an instance believes in: past it, announced joins
#: are ignored (it claims every request anyway), so a flood of forged ones costs little.
MAX_INSTANCES = 1000
#: How long an instance waits before claiming a request another instance is preferred
#: for: the preferred one wins unless its loop lags by about this much.
DEFER = 0.005


# What new_instance_id makes, the host name letters it may take included: an
# announcement naming anything else is not from an instance (nor logged as one).
_INSTANCE_ID = re.compile(r"[A-Za-z0-9._-]{1,100}:[0-9]{1,10}:[0-9a-f]{6}")
# What Instances.mark puts in a sync marker: one bounded in size is all that is kept.
_MARK = re.compile(r"[0-9a-f]{1,32}")


class _Claim(NamedTuple):
    """A message to claim, and what to do once it is won (see :meth:`Instances.take`)."""

    key: str
    what: str
    channel: str
    unclaimed: bool
    then: Callable[..., None]
    args: tuple[Any, ...]


def new_instance_id() -> str:
    """``<host>:<pid>:<random>``: tells the instances of a service apart in logs."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:100] or "host"
    return f"{host}:{os.getpid()}:{secrets.token_hex(3)}"


class Instances:
    """This instance among those of its service: whether it shares, and its claims."""

    def __init__(self, runtime: ServiceRuntime, instance_id: str) -> None:
        self.id = instance_id
        self.service = runtime.service
        self.transport = runtime.transport
        self.loop = runtime.loop
        self.throttle = runtime.throttle
        self._key = protocol.instances_key(self.service)
        self._channel = protocol.instances_channel(self.service)
        #: True while requests must be claimed before they run: read for each request.
        self.shared = False
        #: The other instances this one knows of.
        self.others: set[str] = set()
        # Every instance known, this one too, in one order all of them agree on.
        self._ring = [instance_id]
        #: Messages (requests, broadcasts) this instance claimed and won, and those
        #: another instance won.
        self.taken = 0
        self.passed = 0
        #: True once this instance has begun to leave: it takes no more broadcasts
        #: for its shared listeners (see :meth:`leave`).
        self.leaving = False
        #: How many times the connection carrying the subscriptions was lost.
        self.disconnects = 0
        #: Called with ``(name, mark)`` for each sync marker read (this instance's own
        #: too), and once the subscriptions are back after a lost connection: set by
        #: :mod:`.shared_listeners`.
        self.on_sync: Callable[[str, str], None] | None = None
        self.on_receiving: Callable[[], None] | None = None
        #: Called at every renewal, with it: :mod:`.presence` writes the registry entry.
        self.on_renew: list[Callable[[], Awaitable[Any]]] = []
        self._enabled = False
        self._uncertain = False  # announcements may have been missed
        # Until when to go on claiming once no other instance is known: one that was
        # only frozen (its entry expired) may come back and claim what this one ran.
        self._claim_until = 0.0
        # Instances that announced their departure: gone for good, not maybe frozen.
        self._departed: set[str] = set()
        # Loop time before which a renewal may not end the uncertainty (see _rejoin).
        self._certain_after = 0.0
        self._rejoining: asyncio.Task[None] | None = None
        self._renewed_at: float | None = None
        # Joins announced while a renewal is under way: newer than what it reads.
        self._recent: list[str] | None = None
        # A renewal made because an instance announced it left (see _on_announcement).
        self._checking: asyncio.Task[None] | None = None
        self._renewing = asyncio.Lock()
        self._subscription: Subscription | None = None
        self._renewer: asyncio.Task[None] | None = None
        # Claims sent and not yet answered, and the late ones still to send (by when).
        self._unanswered = 0
        self._deferred: list[tuple[float, int, _Claim]] = []
        # uvloop's call_at gives a plain Handle, without when(), for a time already
        # past: the timer's due time is kept here.
        self._deferred_timer: asyncio.Handle | None = None
        self._deferred_due = 0.0
        self._order = itertools.count()  # keeps claims due together in order
        self._settled: asyncio.Event | None = None
        self._markers: set[asyncio.Task[None]] = set()

    # -- arriving and leaving --------------------------------------------------------
    async def join(self) -> None:
        """Learn of the other instances and announce this one; before requests come in.

        A transport without claims (or a server refusing them) leaves the instance
        running every request it gets, as before instances shared requests.
        """
        transport = self.transport
        try:
            self._subscription = await transport.subscribe(self._channel, self._on_announcement)
            members = await transport.renew_member(self._key, self.id, EXPIRY_MS)
            self._renewed_at = self.loop.time()
            self._set_others(members)
            await transport.publish(self._channel, self._announcement("join"))
        except (NotImplementedError, TransportError) as exc:
            if isinstance(exc, TransportError):
                logger.warning(
                    "instance %s cannot share the requests of %r with other instances "
                    "(%s): it runs every request it gets",
                    self.id,
                    self.service,
                    exc,
                )
            await self._unsubscribe()
            self.others.clear()
            self.shared = False
            return
        self._enabled = True
        transport.add_disconnect_handler(self._on_disconnect)
        self._renewer = self.loop.create_task(
            self._renew_forever(), name=f"daebus-instances {self.service}"
        )
        if self.others:
            logger.info(
                "instance %s joins %d other instance(s) of %r: requests are claimed",
                self.id,
                len(self.others),
                self.service,
            )

    @property
    def enabled(self) -> bool:
        """True while this instance is in the record and reads the announcements."""
        return self._enabled

    async def leave(self) -> None:
        """Remove this instance from the record and announce it (idempotent).

        Call it once the service's channels are unsubscribed: the others then claim
        every request this instance might still have got. From now on this instance
        takes no broadcast for a shared listener while others run: they claim each one
        it might still get, since it stops claiming before it announces its departure.
        """
        if not self._enabled:
            return
        self.leaving = True
        self._enabled = False
        self.transport.remove_disconnect_handler(self._on_disconnect)
        for task in (self._renewer, self._checking, self._rejoining):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._renewer = self._checking = self._rejoining = None
        try:
            await self.transport.remove_member(self._key, self.id)
            await self.transport.publish(self._channel, self._announcement("leave"))
        except TransportError as exc:  # the others forget it when its entry expires
            logger.debug("instance %s could not announce its departure: %s", self.id, exc)
        await self._unsubscribe()

    async def _unsubscribe(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            with contextlib.suppress(TransportError):
                await subscription.unsubscribe()

    async def claims_settled(self, timeout: float) -> None:
        """Wait (up to ``timeout`` seconds) for the claims under way to be answered."""
        if self._unanswered or self._deferred:
            self._settled = asyncio.Event()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._settled.wait(), max(0.0, timeout))

    def _announcement(self, event: str) -> bytes:
        return encoding.dumps({"event": event, "instance": self.id})

    def mark(self, name: str) -> None:
        """Publish a sync marker for the listener channel or pattern ``name``.

        Every instance of the service reading ``name`` reads the marker at the same
        point of that channel's messages (see :mod:`.shared_listeners`). Sent in the
        background; a marker lost is asked again for by whoever still needs one.
        """
        if not self._enabled:
            return
        marker = {"event": "sync", "instance": self.id, "name": name, "mark": secrets.token_hex(8)}
        task = self.loop.create_task(self._publish(encoding.dumps(marker)))
        self._markers.add(task)
        task.add_done_callback(self._markers.discard)

    async def _publish(self, data: bytes) -> None:
        try:
            await self.transport.publish(self._channel, data)
        except TransportError as exc:
            logger.debug("instance %s could not publish a sync marker: %s", self.id, exc)

    # -- knowing of the others -------------------------------------------------------
    def _on_announcement(self, delivery: Delivery) -> None:
        try:
            message = protocol.decode_object(delivery.data)
        except protocol.BadMessageError:
            return
        event, who = message.get("event"), message.get("instance")
        if event == "sync":  # this instance's own markers too
            name, mark = message.get("name"), message.get("mark")
            if (
                self.on_sync is not None
                and isinstance(name, str)
                and isinstance(mark, str)
                and _MARK.fullmatch(mark)
            ):
                self.on_sync(name, mark)
            return
        if (
            not isinstance(who, str)
            or who == self.id
            or event not in ("join", "leave")
            or not _INSTANCE_ID.fullmatch(who)
        ):
            return
        # Anyone who can publish can announce anything. A departure taken on its word
        # could make this instance run alone while another still runs, and both run
        # every request: the record decides (the instance that left removed itself from
        # it before announcing). A join is taken at once, since an instance that
        # believes others run only claims more than it needs to, and checked too.
        if event == "leave":
            if who in self.others:
                self._departed.add(who)
                self._check_record()
            return
        if self._recent is not None:
            self._recent.append(who)
        if who not in self.others and len(self.others) < MAX_INSTANCES:
            self.others.add(who)
            self._update()
            self.throttle.log(
                logging.INFO,
                "joined",
                "instance %s of %r joined: this instance (%s) knows of %d other(s)",
                who,
                self.service,
                self.id,
                len(self.others),
            )
            self._check_record()

    def _check_record(self) -> None:
        """Read the record soon (one reading at a time) to learn who really runs."""
        if self._checking is None or self._checking.done():
            self._checking = self.loop.create_task(
                self.renew(), name=f"daebus-instances-check {self.service}"
            )

    def _set_others(self, members: list[str]) -> None:
        others = {member for member in members if member != self.id}
        if (self.others - others) - self._departed:
            # Expired without a word: killed, or frozen and coming back. Claims made
            # meanwhile keep a thawed one from running again what ran here.
            self._claim_until = self.loop.time() + CLAIM_TTL_MS / 1000
        self._departed &= others
        self.others = others
        self._update()

    def _update(self) -> None:
        self.shared = bool(self.others) or self._uncertain or self.loop.time() < self._claim_until
        self._ring = sorted({*self.others, self.id})

    def _on_disconnect(self, _error: TransportError) -> None:
        self.disconnects += 1
        self._uncertain = True
        self._update()
        if self._rejoining is None or self._rejoining.done():
            self._rejoining = self.loop.create_task(
                self._rejoin(), name=f"daebus-instances-rejoin {self.service}"
            )

    async def _rejoin(self) -> None:
        """Once subscribed again: write this instance back and announce it.

        A restarted server has forgotten the record: every instance writes itself back
        and announces itself as soon as it is back, and none trusts a record that says
        it is alone before every other one has had a renewal's time to do the same.
        """
        await self.transport.until_receiving()
        if self.on_receiving is not None:
            self.on_receiving()
        self._certain_after = self.loop.time() + RENEW_EVERY
        await self.renew()
        with contextlib.suppress(TransportError):
            await self.transport.publish(self._channel, self._announcement("join"))

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            # The instance's other periodic writes (its registry entry) go with this
            # one, in the same write to the server: an idle service wakes up once.
            await asyncio.gather(self.renew(), *(write() for write in self.on_renew))

    async def renew(self) -> None:
        """Renew this instance's entry and re-read the record (every :data:`RENEW_EVERY`)."""
        # One at a time: the joins announced during a renewal are kept for it alone.
        async with self._renewing:
            # Joins announced while it read are believed meanwhile, then checked by
            # reading again: a real instance is in the record by then, a forged one not.
            while await self._renew():
                pass

    async def _renew(self) -> bool:
        """Renew and read the record once; True if joins came meanwhile (read again)."""
        disconnects, receiving = self.disconnects, self.transport.receiving
        self._recent = []
        try:
            members = await self.transport.renew_member(self._key, self.id, EXPIRY_MS)
        except TransportError as exc:
            # While the subscriber reconnects, the transport already says the server is
            # unreachable, and how long for: a line here every heartbeat would repeat it.
            self.throttle.log(
                logging.WARNING if self.transport.receiving else logging.DEBUG,
                "renew",
                "instance %s could not renew its entry for %r: %s",
                self.id,
                self.service,
                exc,
            )
            return False
        finally:
            recent, self._recent = self._recent, None
        now = self.loop.time()
        lapsed = self._renewed_at is None or now - self._renewed_at >= EXPIRY_MS / 1000
        self._renewed_at = now
        was_shared = self.shared
        self._set_others(members)
        self.others.update(recent[: max(0, MAX_INSTANCES - len(self.others))])
        if receiving and disconnects == self.disconnects and now >= self._certain_after:
            self._uncertain = False
        self._update()
        if self.shared and not was_shared:
            logger.info(
                "instance %s of %r knows of %d other(s): requests are claimed",
                self.id,
                self.service,
                len(self.others),
            )
        elif was_shared and not self.shared:
            logger.info(
                "instance %s of %r: no other instance runs; it runs every request alone",
                self.id,
                self.service,
            )
        if lapsed:
            # Its entry may have expired meanwhile: the others may have forgotten it.
            with contextlib.suppress(TransportError):
                await self.transport.publish(self._channel, self._announcement("join"))
        return bool(recent)

    # -- claiming --------------------------------------------------------------------
    def claim(self, kind: str, delivery: Delivery, then: Callable[[str, Delivery], None]) -> None:
        """Claim a request; ``then(kind, delivery)`` runs it if this instance wins."""
        hashed = hashlib.blake2b(delivery.data, digest_size=16)
        hashed.update(delivery.channel.encode("utf-8", "replace"))
        self.take(hashed.digest(), "a request", delivery.channel, then, kind, delivery)

    def take(
        self,
        digest: bytes,
        what: str,
        channel: str,
        then: Callable[..., None],
        *args: Any,
        unclaimed: bool = False,
        defer: float = DEFER,
    ) -> None:
        """Claim the message known by ``digest``; ``then(*args)`` if this instance wins.

        ``what`` and ``channel`` say what it is in a log line. A claim the server does
        not answer drops the message, unless ``unclaimed``: then it runs anyway, which
        may run it twice rather than not at all. An instance not preferred for the
        message claims it ``defer`` seconds late.

        Every instance claims every message: no task is made for a claim, and the
        late ones wait together, under one timer.
        """
        ring = self._ring
        preferred = ring[int.from_bytes(digest[:8], "big") % len(ring)]
        claim = _Claim(
            protocol.claim_key(self.service, digest.hex()), what, channel, unclaimed, then, args
        )
        if preferred == self.id:
            self._send(claim)
            return
        due = self.loop.time() + defer
        heapq.heappush(self._deferred, (due, next(self._order), claim))
        if self._deferred_timer is None or due < self._deferred_due:
            if self._deferred_timer is not None:
                self._deferred_timer.cancel()
            self._deferred_timer = self.loop.call_at(due, self._send_due)
            self._deferred_due = due

    def _send_due(self) -> None:
        """Send the late claims now due; wake up again for the next one."""
        self._deferred_timer = None
        deferred, now = self._deferred, self.loop.time()
        while deferred and deferred[0][0] <= now:
            self._send(heapq.heappop(deferred)[2])
        if deferred:
            self._deferred_due = deferred[0][0]
            self._deferred_timer = self.loop.call_at(self._deferred_due, self._send_due)

    def _send(self, claim: _Claim) -> None:
        self._unanswered += 1
        self.transport.claim_then(
            claim.key, self.id, CLAIM_TTL_MS, functools.partial(self._answered, claim)
        )

    def _answered(self, claim: _Claim, won: bool | Exception) -> None:
        self._unanswered -= 1
        if not self._unanswered and not self._deferred and self._settled is not None:
            self._settled.set()
        if isinstance(won, Exception):
            self.throttle.log(
                logging.WARNING,
                "claim",
                "%s %s on %r: could not claim it: %s",
                "ran" if claim.unclaimed else "dropped",
                f"{claim.what} unclaimed" if claim.unclaimed else f"{claim.what} unrun",
                protocol.shorten(claim.channel),
                won,
            )
            if claim.unclaimed:
                claim.then(*claim.args)
        elif won:
            self.taken += 1
            claim.then(*claim.args)
        else:
            self.passed += 1
