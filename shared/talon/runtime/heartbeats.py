"""Keeping running turns' leases alive while their steps run (model calls can be slow).

One thread renews every running turn of a runner, each a third of its lease after the last
renewal: a thread of its own per turn cost ~160 us of CPU to start and stop, about 4% of the
worker's CPU for a quick turn. Renewals run one after another, so a renewal that waits (for a
pooled connection, for the session row a turn's own write holds) delays the others; a lease
has two thirds of its length left when its renewal is due, and the turn's own writes renew it
too.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from talon.runtime.journal import Fenced, Lease, renew
from talon.store.database import Database

__all__ = ["Heartbeat", "Heartbeats"]

log = logging.getLogger(__name__)

# How long the thread waits with no running turn before it ends (a later turn starts it again).
IDLE_SECONDS = 60.0


class Heartbeat:
    """One running turn's lease as `Heartbeats` keeps it."""

    def __init__(self, keeper: Heartbeats, lease: Lease) -> None:
        self.lease = lease
        self.due = time.monotonic() + lease.seconds / 3
        self.lost = False  # a renewal found the turn cancelled, deleted or taken over
        self._keeper = keeper

    def check(self) -> None:
        if self.lost:
            raise Fenced(str(self.lease.turn_id))

    def stop(self) -> None:
        self._keeper.forget(self)


class Heartbeats:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._beats: set[Heartbeat] = set()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._waiting_until = math.inf  # when the thread will look again by itself

    def start(self, lease: Lease) -> Heartbeat:
        """Keep `lease` renewed until the returned heartbeat is stopped."""
        beat = Heartbeat(self, lease)
        with self._wake:
            self._beats.add(beat)
            if self._thread is None or not self._thread.is_alive():
                # Started here, in the process that runs turns (a thread does not survive a
                # fork), and again after it ended for want of turns.
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="talon-lease")  # fmt: skip
                self._thread.start()
            elif beat.due < self._waiting_until:
                # Only then does the thread need to look again: waking it for every turn cost
                # a thread switch each (it still waits for a finished turn's renewal, finds
                # nothing due and waits for the next).
                self._wake.notify()
        return beat

    def forget(self, beat: Heartbeat) -> None:
        with self._wake:
            self._beats.discard(beat)

    def _run(self) -> None:
        with self._wake:
            while True:
                if not self._beats:
                    self._waiting_until = time.monotonic() + IDLE_SECONDS
                    self._wake.wait(IDLE_SECONDS)
                    if not self._beats:
                        self._thread = None
                        return
                    continue
                beat = min(self._beats, key=lambda b: b.due)
                wait = beat.due - time.monotonic()
                if wait > 0:
                    self._waiting_until = beat.due
                    self._wake.wait(wait)
                    continue
                self._waiting_until = math.inf  # renewing: it looks again right after
                # Renewed outside the lock: starting and stopping turns must not wait for it.
                self._wake.release()
                try:
                    alive = self._renew(beat)
                finally:
                    self._wake.acquire()
                if alive:
                    beat.due = time.monotonic() + beat.lease.seconds / 3
                else:
                    self._beats.discard(beat)

    def _renew(self, beat: Heartbeat) -> bool:
        """False once the turn is lost to this worker (its steps then stop at `check`)."""
        try:
            with self._db.transaction() as tx:
                renew(tx, beat.lease)
        except Fenced:
            beat.lost = True
            return False
        except Exception as exc:  # the next renewal, or the step's own, will decide
            if self._db.closed:  # the runner is shutting down: nothing will renew again
                return False
            log.warning("lease renewal failed: %s", exc)
        return True
