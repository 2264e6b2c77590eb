"""The `postgres` scheduler backend: a loop in each worker claims due schedules with
FOR UPDATE SKIP LOCKED and fires them. Any number of workers may run it; the fire slot's
primary key keeps every fire single even if two loops see the same due time."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from talon.scheduling import state
from talon.scheduling.fires import Fire, ScheduleFirer
from talon.scheduling.state import Key
from talon.scheduling.timing import next_fire_after, slot_to_fire
from talon.store.database import Database, Tx

log = logging.getLogger(__name__)
BATCH = 500  # schedules claimed and fired per transaction


class LocalScheduler:
    def __init__(self, db: Database, firer: ScheduleFirer) -> None:
        self.db = db
        self.firer = firer

    def tick(self, now: datetime | None = None) -> int:
        """Fire every schedule due at `now` (default: the current time); return the fires."""
        now = now or datetime.now(UTC)
        with self.db.transaction() as tx:
            state.adopt_unknown(tx, now)
        fired = 0
        after: Key | None = None
        while True:
            try:
                count, claimed, last = self._tick_batch(now, after, isolate=False)
            except Exception as exc:
                # Something in the batch broke it: redo it fire by fire, so one broken
                # schedule is logged and moved on instead of holding up the others.
                log.warning("scheduler batch failed (%s); firing one by one", exc)
                count, claimed, last = self._tick_batch(now, after, isolate=True)
            fired += count
            if claimed < BATCH:
                return fired
            after = last

    def next_due(self) -> datetime | None:
        with self.db.transaction() as tx:
            return state.next_due(tx)

    def run(self, stop: threading.Event, *, interval: float = 1.0) -> None:
        """Tick until `stop`; sleep until the next due time, at most `interval` (schedules
        written meanwhile are seen within it)."""
        while not stop.is_set():
            wait = interval
            try:
                self.tick()
                due = self.next_due()
                if due is not None:
                    wait = min(interval, max(0.0, (due - datetime.now(UTC)).total_seconds()))
            except Exception as exc:
                log.warning("scheduler tick failed: %s", exc)
            stop.wait(wait)

    def _tick_batch(
        self, now: datetime, after: Key | None, *, isolate: bool
    ) -> tuple[int, int, Key | None]:
        with self.db.transaction() as tx:
            due = state.lock_due(tx, now, after, BATCH)
            fires = []
            for row in due:
                due_at = datetime.fromtimestamp(float(row["due"]), UTC)  # see fires.py, epoch
                slot, reason = slot_to_fire(row["body"], due_at, now)
                if slot is not None:
                    fires.append(Fire(row["namespace"], row["name"], slot, reason,
                                      row["resource_version"], row["body"]))  # fmt: skip
            count = self._fire(tx, fires) if not isolate else self._fire_isolated(tx, fires)
            state.move_many(
                tx, [(r["namespace"], r["name"], next_fire_after(r["body"], now)) for r in due]
            )
        last = (str(due[-1]["due"]), due[-1]["namespace"], due[-1]["name"]) if due else None
        return count, len(due), last

    def _fire(self, tx: Tx, fires: list[Fire]) -> int:
        return sum(bool(r["claimed"]) for r in self.firer.fire_many(tx, fires))

    def _fire_isolated(self, tx: Tx, fires: list[Fire]) -> int:
        count = 0
        for fire in fires:
            tx.execute("SAVEPOINT fire")
            try:
                count += self._fire(tx, [fire])
            except Exception as exc:
                tx.execute("ROLLBACK TO SAVEPOINT fire")
                log.error("schedule %s/%s failed to fire: %s", fire.namespace, fire.name, exc)
            tx.execute("RELEASE SAVEPOINT fire")
        return count
