"""The `postgres` scheduler backend: a loop in each worker claims due schedules with
FOR UPDATE SKIP LOCKED and fires them. Any number of workers may run it; the fire slot's
primary key keeps every fire single even if two loops see the same due time."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

from talon.scheduling.fires import ScheduleFirer
from talon.scheduling.timing import next_fire_after, slot_to_fire
from talon.store.database import Database, Tx

log = logging.getLogger(__name__)
BATCH = 100


class LocalScheduler:
    def __init__(self, db: Database, firer: ScheduleFirer) -> None:
        self.db = db
        self.firer = firer

    def tick(self, now: datetime | None = None) -> int:
        """Fire every schedule due at `now` (default: the current time); return the fires."""
        now = now or datetime.now(UTC)
        fired = 0
        while True:
            with self.db.transaction() as tx:
                _adopt_unknown(tx, now)
                due = tx.all(
                    "SELECT st.namespace, st.name, st.next_fire_at, r.body FROM schedule_state st "
                    "JOIN resources r ON r.kind = 'Schedule' AND r.namespace = st.namespace "
                    "AND r.name = st.name WHERE st.next_fire_at <= %s "
                    "ORDER BY st.next_fire_at LIMIT %s FOR UPDATE OF st SKIP LOCKED",
                    (now, BATCH),
                )
                for row in due:
                    fired += self._fire_due(tx, row, now)
            if len(due) < BATCH:
                return fired

    def _fire_due(self, tx: Tx, row: dict[str, Any], now: datetime) -> int:
        spec = row["body"]
        slot, reason = slot_to_fire(spec, row["next_fire_at"], now)
        count = 0
        if slot is not None:
            try:
                result = self.firer.fire(row["namespace"], row["name"], slot, reason)
                count = int(result.get("claimed", False))
            except Exception as exc:  # one broken schedule must not stop the others
                log.error("schedule %s/%s failed to fire: %s", row["namespace"], row["name"], exc)
        tx.execute(
            "UPDATE schedule_state SET next_fire_at = %s WHERE namespace = %s AND name = %s",
            (next_fire_after(spec, now), row["namespace"], row["name"]),
        )
        return count

    def run(self, stop: threading.Event, *, interval: float = 1.0) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception as exc:
                log.warning("scheduler tick failed: %s", exc)
            stop.wait(interval)


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
