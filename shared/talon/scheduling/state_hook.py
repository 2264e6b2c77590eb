"""Keeps a schedule's firing state in step with its manifest (a resource hook)."""

from __future__ import annotations

from datetime import UTC, datetime

from talon.scheduling import state
from talon.scheduling.tasks import SCHEDULE_CHANGED
from talon.scheduling.timing import next_fire_after
from talon.store.database import Tx
from talon.store.resources import Record


class ScheduleStateHook:
    kinds: tuple[str, ...] = ("Schedule",)

    def written(self, tx: Tx, record: Record, *, created: bool) -> None:
        """Next fire from now: a new, changed or re-enabled schedule never replays the past."""
        upcoming = next_fire_after(record.body, datetime.now(UTC))
        state.upsert(tx, record.namespace, record.name, record.resource_version, upcoming)
        tx.announce(SCHEDULE_CHANGED, (record.namespace, record.name))

    def deleted(self, tx: Tx, record: Record) -> None:
        state.delete(tx, record.namespace, record.name)
