"""Keeping running turns' leases alive while their steps run (model calls can be slow).

One thread per runner keeps the schedule: each running turn is renewed a third of its lease
after its last renewal. A thread of its own per turn cost ~160 us of CPU to start and stop,
about 4% of the worker's CPU for a quick turn; a quick turn now costs none, since it is over
before its first renewal is due. Each renewal that comes due runs on a short-lived thread of
its own, so one that waits (for a pooled connection, for a session row another transaction
holds) delays no other turn's.
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
        self.renewing = False  # a renewal of it is under way
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
                # a thread switch each (it may wait for a finished turn's renewal instead:
                # then it finds nothing due and waits for the next).
                self._wake.notify()
        return beat

    def forget(self, beat: Heartbeat) -> None:
        with self._wake:
            self._beats.discard(beat)

    def _run(self) -> None:
        idle_until: float | None = None
        with self._wake:
            while True:
                now = time.monotonic()
                if not self._beats:
                    idle_until = idle_until or now + IDLE_SECONDS
                    if now >= idle_until:
                        self._thread = None
                        return
                    self._waiting_until = idle_until
                    self._wake.wait(idle_until - now)
                    continue
                idle_until = None
                waiting = [b for b in self._beats if not b.renewing]
                if not waiting:  # each renewal says when it is done
                    self._waiting_until = math.inf
                    self._wake.wait()
                    continue
                beat = min(waiting, key=lambda b: b.due)
                if beat.due > now:
                    self._waiting_until = beat.due
                    self._wake.wait(beat.due - now)
                    continue
                beat.renewing = True
                threading.Thread(target=self._renew_one, args=(beat,), daemon=True,
                                 name="talon-lease-renewal").start()  # fmt: skip

    def _renew_one(self, beat: Heartbeat) -> None:
        alive = self._renew(beat)
        with self._wake:
            beat.renewing = False
            if not alive:
                self._beats.discard(beat)
                return
            beat.due = time.monotonic() + beat.lease.seconds / 3
            if beat in self._beats and beat.due < self._waiting_until:
                self._wake.notify()

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
