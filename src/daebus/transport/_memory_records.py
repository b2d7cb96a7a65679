"""The claims, membership records and expiring entries of a ``memory://`` broker.

What Redis keeps for the instances of a service (``SET NX PX`` claims, sorted sets of
members scored with their expiry) and for the service registry (keys that expire,
listed in an index), kept as Redis keeps them, on the process's monotonic clock.
Thread-safe: the transports of one broker live on any loop or thread.
"""

from __future__ import annotations

import threading
import time

__all__ = ["MemoryRecords"]


class MemoryRecords:
    """Claims, membership records and entries with an expiry, behind one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # key -> (owner, expiry) of claims, and member -> expiry of each record; expiries
        # are monotonic seconds.
        self._claims: dict[str, tuple[str, float]] = {}
        self._claims_pruned_at = 0
        self._records: dict[str, dict[str, float]] = {}
        # key -> (value, expiry) of the entries an index lists.
        self._entries: dict[str, tuple[bytes, float]] = {}

    # -- claims ------------------------------------------------------------------------
    def claim(self, key: str, ttl_ms: int, owner: str = "") -> bool:
        """Take ``key`` for ``owner`` for ``ttl_ms`` ms unless it is held: ``SET NX PX``."""
        now = time.monotonic()
        with self._lock:
            claims = self._claims
            held = claims.get(key)
            if held is not None and held[1] > now:
                return False
            claims[key] = (owner, now + ttl_ms / 1000)
            # Forget the expired claims now and then, as the server would.
            if len(claims) > 2 * self._claims_pruned_at + 1000:
                for stale in [k for k, (_, until) in claims.items() if until <= now]:
                    del claims[stale]
                self._claims_pruned_at = len(claims)
            return True

    def renew_claim(self, key: str, owner: str, ttl_ms: int) -> bool:
        """Hold ``key`` ``ttl_ms`` ms more if ``owner`` still holds it."""
        now = time.monotonic()
        with self._lock:
            held = self._claims.get(key)
            if held is None or held[0] != owner or held[1] <= now:
                return False
            self._claims[key] = (owner, now + ttl_ms / 1000)
            return True

    def release_claim(self, key: str, owner: str) -> bool:
        """Drop ``key`` if ``owner`` still holds it."""
        now = time.monotonic()
        with self._lock:
            held = self._claims.get(key)
            if held is None or held[0] != owner or held[1] <= now:
                return False
            del self._claims[key]
            return True

    # -- membership records ------------------------------------------------------------
    def renew_member(self, key: str, member: str, ttl_ms: int) -> list[str]:
        """Keep ``member`` alive ``ttl_ms`` ms more; forget the expired; list the members."""
        now = time.monotonic()
        with self._lock:
            record = self._renewed(key, member, now + ttl_ms / 1000, now)
            return sorted(record)

    def remove_member(self, key: str, member: str) -> None:
        """Forget ``member`` of the record ``key`` (idempotent)."""
        with self._lock:
            self._remove(key, member)

    def _renewed(self, key: str, member: str, until: float, now: float) -> dict[str, float]:
        record = self._records.setdefault(key, {})
        for stale in [name for name, expiry in record.items() if expiry <= now]:
            del record[stale]
        record[member] = until
        return record

    def _remove(self, key: str, member: str) -> None:
        record = self._records.get(key)
        if record is not None:
            record.pop(member, None)
            if not record:
                del self._records[key]

    # -- entries listed in an index ------------------------------------------------------
    def put_entry(self, index: str, key: str, value: bytes, ttl_ms: int) -> None:
        """``SET key value PX ttl_ms``, and ``key`` listed in ``index`` until it expires."""
        now = time.monotonic()
        until = now + ttl_ms / 1000
        with self._lock:
            self._entries[key] = (value, until)
            self._renewed(index, key, until, now)
            # Expired keys are forgotten as the server forgets them.
            for stale in [k for k, (_, expiry) in self._entries.items() if expiry <= now]:
                del self._entries[stale]

    def drop_entry(self, index: str, key: str) -> None:
        """Delete ``key`` and take it off ``index`` (idempotent)."""
        with self._lock:
            self._entries.pop(key, None)
            self._remove(index, key)

    def entries(self, index: str) -> list[tuple[str, bytes, float]]:
        """``(key, value, seconds left)`` of each live entry ``index`` lists, by key."""
        now = time.monotonic()
        with self._lock:
            found = []
            for key in sorted(self._records.get(index, ())):
                entry = self._entries.get(key)
                if entry is not None and entry[1] > now:
                    found.append((key, entry[0], entry[1] - now))
            return found
