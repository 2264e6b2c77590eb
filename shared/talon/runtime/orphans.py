"""The orphan sweep: a pull worker on a broker that keeps a dead worker's messages (Pub/Sub
streaming pull) takes the dead worker's turns over itself, instead of waiting for their
messages to come back after the ack deadline the dead worker stopped extending (10 s at least
on Pub/Sub).

While the worker has an idle handler, every `worker.takeoverPollSeconds` it asks one short
read-only transaction for sessions whose head turn is running under a lease whose owner's
liveness lock is gone (`store/liveness.py`; a small partial index holds the running turns, so
the cost grows with the turns running fleet-wide, not with the table), and drives each one
through the same handler a delivery would (the claim treats a dead owner's lease as free,
bumps the fencing token, and the journal resumes the turn; the session's queued turns run
after it). A turn that does not crash pays nothing: no write, no extra commit.

Races are the claim's: two live workers sweeping one orphan, or a sweep and the dead worker's
message coming back, serialize on the session row; the loser finds the session held by a live
owner and lets it be (a message is deferred, as for any busy session, and acknowledged once it
finds nothing to do).

The PostgreSQL broker needs no sweep (its rows held by a dead worker are claimable at once,
`broker/postgres.py`), and the push function has no background loop to run one in: there the
next delivery for the session takes the turn over.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from talon.store.database import Database
from talon.store.liveness import owner_gone_sql

log = logging.getLogger(__name__)

# Distinct owners of running turns other than us, each asked once whether it is gone (the
# probe is volatile, so the CTE is evaluated once per owner), then their turns' sessions.
_ORPHANS_SQL = f"""
WITH owners AS (
    SELECT DISTINCT lease_owner FROM turns WHERE state = 'running' AND lease_owner <> %s
), gone AS (
    SELECT lease_owner FROM owners WHERE {owner_gone_sql("lease_owner")}
)
SELECT t.session_uid, t.lease_owner FROM turns t JOIN gone ON gone.lease_owner = t.lease_owner
WHERE t.state = 'running' ORDER BY t.lease_expires_at LIMIT %s
"""
# Sessions nobody drives though their head open turn has been queued for `STALLED_SECONDS`: no
# turn of theirs runs, so no worker holds them, and the delivery that should have started it
# has not (lost with a worker killed between finishing one turn and claiming the next, or held
# back by the broker). Driving one does what that delivery would; when the delivery comes, it
# finds nothing to do. Reads the open turns only (the partial index `turns_open`).
_STALLED_SQL = """
SELECT head.session_uid FROM (
    SELECT DISTINCT ON (session_uid) session_uid, state, created_at FROM turns
    WHERE state IN ('queued', 'running') ORDER BY session_uid, seq
) head
WHERE head.state = 'queued' AND head.created_at < now() - make_interval(secs => %s)
ORDER BY head.created_at LIMIT %s
"""
STALLED_SECONDS = 15.0


def find_orphans(
    db: Database, owner: str, limit: int, skip: set[uuid.UUID] | None = None
) -> list[tuple[uuid.UUID, str]]:
    """Up to `limit` sessions (and their dead owners) whose running turn's owner is gone;
    none of `skip`, nor any of `owner`'s own."""
    skip = skip or set()
    with db.transaction() as tx:  # the probes' shared locks end with it
        rows = tx.all(_ORPHANS_SQL, (owner, limit + len(skip)))
    found = [(uuid.UUID(str(row["session_uid"])), str(row["lease_owner"])) for row in rows]
    return [(session, dead) for session, dead in found if session not in skip][:limit]


def find_stalled(
    db: Database, limit: int, skip: set[uuid.UUID] | None = None,
    stalled_seconds: float = STALLED_SECONDS,
) -> list[uuid.UUID]:  # fmt: skip
    """Up to `limit` sessions whose head open turn has been queued for `stalled_seconds` (none
    of theirs runs); none of `skip`."""
    skip = skip or set()
    with db.transaction() as tx:
        rows = tx.all(_STALLED_SQL, (stalled_seconds, limit + len(skip)))
    found = [uuid.UUID(str(row["session_uid"])) for row in rows]
    return [session for session in found if session not in skip][:limit]


class Capacity:
    """Handlers busy out of `size`: deliveries and sweeps count alike, so the sweep takes
    only what is idle (a delivery may still arrive meanwhile: the broker's flow control does
    not know of the sweep, so for a moment up to twice `size` may run)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._busy = 0
        self._lock = threading.Lock()

    def idle(self) -> int:
        with self._lock:
            return self.size - self._busy

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """One handler busy for the duration."""
        with self._lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1


class OrphanSweep:
    def __init__(
        self,
        db: Database,
        owner: str,
        take_over: Callable[[uuid.UUID], object],
        capacity: Capacity,
        *,
        poll: float,
    ) -> None:
        self.db = db
        self.owner = owner
        self.capacity = capacity
        self.poll = poll
        self._take_over = take_over
        self._driving: set[uuid.UUID] = set()
        self._lock = threading.Lock()
        self._next_stalled = 0.0  # monotonic time of the next look for stalled sessions

    def run(self, stop: threading.Event) -> None:
        """Sweep every `poll` seconds until `stop` is set; then wait for the takeovers in
        progress."""
        with ThreadPoolExecutor(self.capacity.size, thread_name_prefix="talon-sweep") as pool:
            while not stop.wait(self.poll):
                try:
                    self.sweep_once(pool.submit)
                except Exception as exc:  # the database is down or restarting: next time
                    log.warning("orphan sweep failed: %s", exc)

    def sweep_once(self, submit: Callable[..., object]) -> int:
        """Look once (only with an idle handler); start a takeover for each orphan found."""
        idle = self.capacity.idle()
        if idle <= 0:
            return 0
        with self._lock:
            skip = set(self._driving)
        found = find_orphans(self.db, self.owner, idle, skip)
        for session_uid, dead in found:
            log.warning("worker %s is gone: taking over session %s", dead, session_uid)
            self._start(submit, session_uid)
        idle -= len(found)
        now = time.monotonic()
        if idle > 0 and now >= self._next_stalled:
            self._next_stalled = now + STALLED_SECONDS / 3
            stalled = find_stalled(self.db, idle, skip | {s for s, _ in found})
            for session_uid in stalled:
                log.warning("session %s has had a turn queued for %.0f s with no worker on "
                            "it: driving it", session_uid, STALLED_SECONDS)  # fmt: skip
                self._start(submit, session_uid)
            return len(found) + len(stalled)
        return len(found)

    def _start(self, submit: Callable[..., object], session_uid: uuid.UUID) -> None:
        with self._lock:
            self._driving.add(session_uid)
        submit(self._drive, session_uid)

    def _drive(self, session_uid: uuid.UUID) -> None:
        try:
            with self.capacity.busy():
                self._take_over(session_uid)
        except Exception:
            log.exception("taking over session %s failed", session_uid)
        finally:
            with self._lock:
                self._driving.discard(session_uid)
