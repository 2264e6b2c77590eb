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
Key = tuple[str, str, str]  # (next fire as epoch seconds, namespace, name): batch keyset


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

    def _tick_batch(
        self, now: datetime, after: Key | None, *, isolate: bool
    ) -> tuple[int, int, Key | None]:
        # Keyset from the previous batch: the rows it moved left dead entries at the front
        # of the due index, which an OFFSET-less rescan would wade through every time.
        where, params = "", ()
        if after is not None:
            where = (
                "AND (st.next_fire_at, st.namespace, st.name) > "
                "('epoch'::timestamptz + %s::numeric * interval '1 second', %s, %s) "
            )
            params = after
        with self.db.transaction() as tx:
            # Lock the due rows first, then join their manifests: the planner cannot turn
            # the join into a hash of every schedule, whatever its statistics say.
            due = tx.all(
                "WITH due AS (SELECT st.namespace, st.name, st.next_fire_at "
                "FROM schedule_state st "
                f"WHERE st.next_fire_at <= %s {where}"
                "ORDER BY st.next_fire_at, st.namespace, st.name LIMIT %s "
                "FOR UPDATE SKIP LOCKED) "
                "SELECT due.namespace, due.name, extract(epoch FROM due.next_fire_at) AS due, "
                "r.resource_version, r.body FROM due JOIN resources r ON r.kind = 'Schedule' "
                "AND r.namespace = due.namespace AND r.name = due.name "
                "ORDER BY due.next_fire_at, due.namespace, due.name",
                (now, *params, BATCH),
            )
            fires = []
            for row in due:
                due_at = datetime.fromtimestamp(float(row["due"]), UTC)  # see fires.py, epoch
                slot, reason = slot_to_fire(row["body"], due_at, now)
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
