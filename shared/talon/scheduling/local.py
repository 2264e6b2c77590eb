"""The `postgres` scheduler backend: a loop in each worker claims due schedules with
FOR UPDATE SKIP LOCKED and fires them. Any number of workers may run it; the fire slot's
primary key keeps every fire single even if two loops see the same due time."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime

from talon.scheduling.fires import Fire, ScheduleFirer
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
            _adopt_unknown(tx, now)
        fired = 0
        while True:
            try:
                count, claimed = self._tick_batch(now, isolate=False)
            except Exception as exc:
                # Something in the batch broke it: redo it fire by fire, so one broken
                # schedule is logged and moved on instead of holding up the others.
                log.warning("scheduler batch failed (%s); firing one by one", exc)
                count, claimed = self._tick_batch(now, isolate=True)
            fired += count
            if claimed < BATCH:
                return fired

    def next_due(self) -> datetime | None:
        with self.db.transaction() as tx:
            return tx.scalar("SELECT min(next_fire_at) FROM schedule_state")

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

    def _tick_batch(self, now: datetime, *, isolate: bool) -> tuple[int, int]:
        with self.db.transaction() as tx:
            due = tx.all(
                "SELECT st.namespace, st.name, st.next_fire_at, r.resource_version, r.body "
                "FROM schedule_state st JOIN resources r ON r.kind = 'Schedule' "
                "AND r.namespace = st.namespace AND r.name = st.name "
                "WHERE st.next_fire_at <= %s ORDER BY st.next_fire_at LIMIT %s "
                "FOR UPDATE OF st SKIP LOCKED",
                (now, BATCH),
            )
            fires = []
            for row in due:
                slot, reason = slot_to_fire(row["body"], row["next_fire_at"], now)
                if slot is not None:
                    fires.append(Fire(row["namespace"], row["name"], slot, reason,
                                      row["resource_version"], row["body"]))  # fmt: skip
            count = self._fire(tx, fires) if not isolate else self._fire_isolated(tx, fires)
            moved = [
                {"namespace": r["namespace"], "name": r["name"],
                 "next": _iso(next_fire_after(r["body"], now))}
                for r in due
            ]  # fmt: skip
            tx.execute(
                "UPDATE schedule_state st SET next_fire_at = n.next FROM jsonb_to_recordset("
                "%s::jsonb) AS n(namespace text, name text, next timestamptz) "
                "WHERE st.namespace = n.namespace AND st.name = n.name",
                (json.dumps(moved),),
            )
        return count, len(due)

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


def _adopt_unknown(tx: Tx, now: datetime) -> None:
    """Schedules with no state row yet (created before this table existed) start from now."""
    rows = tx.all(
        "SELECT r.namespace, r.name, r.resource_version, r.body FROM resources r "
        "LEFT JOIN schedule_state st ON st.namespace = r.namespace AND st.name = r.name "
        "WHERE r.kind = 'Schedule' AND st.name IS NULL LIMIT 100"
    )
    for row in rows:
        tx.execute(
            "INSERT INTO schedule_state (namespace, name, version, next_fire_at) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (row["namespace"], row["name"], row["resource_version"],
             next_fire_after(row["body"], now)),
        )  # fmt: skip


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
