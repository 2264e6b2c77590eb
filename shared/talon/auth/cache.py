"""Authenticated tokens remembered for a short while, so a request costs no query.

Correctness rests on invalidation, not on the TTL: a revocation (or a replaced bootstrap
secret) empties the cache of the process that made it at once and of every other process when
its notification arrives. Nothing is served from the cache while the notification connection
is down, and an entry looked up before an invalidation is never stored after it.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from talon.auth.principal import Principal

TTL_SECONDS = 30.0  # bounds staleness should a notification be lost with a dead connection
MAX_ENTRIES = 10_000


class PrincipalCache:
    def __init__(self, ttl: float = TTL_SECONDS, max_entries: int = MAX_ENTRIES) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._entries: dict[bytes, tuple[Principal, float]] = {}
        self._version = 0
        self._lock = threading.Lock()

    def get(self, digest: bytes) -> Principal | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        principal, deadline = entry
        if time.monotonic() >= deadline:
            with self._lock:
                self._entries.pop(digest, None)
            return None
        return principal

    def version(self) -> int:
        """Take before the lookup whose result will be `put`."""
        return self._version

    def put(
        self, digest: bytes, principal: Principal, expires_at: datetime | None, version: int
    ) -> None:
        lifetime = self._ttl
        if expires_at is not None:
            lifetime = min(lifetime, (expires_at - datetime.now(UTC)).total_seconds())
        deadline = time.monotonic() + lifetime
        with self._lock:
            if version != self._version:
                return  # invalidated while we looked it up: the lookup may be stale
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[digest] = (principal, deadline)

    def clear(self, _payload: str | None = None) -> None:
        with self._lock:
            self._version += 1
            self._entries.clear()
