"""The `cloud_tasks` scheduler backend, without Google imports: each schedule's next fire is
one task on a queue (the port below; `cloud_tasks.py` is the Google adapter), delivered at
its fire time to the scheduler function's callback, which fires it and enqueues the next.

PostgreSQL stays the source of truth: `schedule_state` says when each schedule fires next
and which fire already has a task, so a crash between a commit and an enqueue is repaired by
`sync()` (after every schedule write, and from the callback's `POST /sweep`). Tasks carry the
schedule version: one from before an update or delete is acknowledged and does nothing.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from talon.errors import BadRequest
from talon.scheduling import state
from talon.scheduling.fires import ScheduleFirer
from talon.scheduling.timing import next_fire_after, slot_to_fire
from talon.store.database import Database

log = logging.getLogger(__name__)
SCHEDULE_CHANGED = "schedule"  # Tx.announce topic: (namespace, name) of a written schedule
# Cloud Tasks refuses a schedule_time more than 30 days ahead: a later fire gets a task at
# the horizon that, delivered early, just enqueues the next leg.
HORIZON = timedelta(days=29)
EARLY_TOLERANCE = timedelta(seconds=1)
SYNC_BATCH = 500
TOKEN_HEADER = "X-Talon-Scheduler-Token"  # the callback's shared secret in `token` mode


@dataclass(frozen=True)
class FireTask:
    namespace: str
    name: str
    version: int
    fire_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "version": str(self.version),
            "fireAt": self.fire_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        }

    @classmethod
    def from_json(cls, body: Any) -> FireTask:
        if not isinstance(body, dict):
            raise BadRequest("the task body must be a JSON object", [])
        problems = [
            {"path": key, "message": "required string"}
            for key in ("namespace", "name", "version", "fireAt")
            if not isinstance(body.get(key), str) or not body[key]
        ]
        if problems:
            raise BadRequest("invalid fire task", problems)
        try:
            version = int(body["version"])
        except ValueError:
            raise _invalid("version", "not an integer") from None
        try:
            fire_at = datetime.fromisoformat(body["fireAt"].replace("Z", "+00:00"))
        except ValueError:
            raise _invalid("fireAt", "not an ISO 8601 time") from None
        if fire_at.tzinfo is None:
            raise _invalid("fireAt", "needs a UTC offset")
        return cls(body["namespace"], body["name"], version, fire_at.astimezone(UTC))

    def task_id(self, deliver_at: datetime) -> str:
        """Deterministic, so a repeated enqueue of the same leg is refused as a duplicate by
        Cloud Tasks. The hash prefix spreads names, as Cloud Tasks recommends."""
        fire = int(self.fire_at.timestamp())
        leg = int(deliver_at.timestamp())
        readable = f"{self.namespace}-{self.name}-v{self.version}-{fire}"
        if leg != fire:
            readable += f"-at{leg}"
        digest = hashlib.sha256(readable.encode()).hexdigest()[:8]
        return f"{digest}-{readable}"


def _invalid(path: str, message: str) -> BadRequest:
    return BadRequest(f"invalid fire task: {path}: {message}", [{"path": path, "message": message}])


class TaskQueue(Protocol):
    def enqueue(self, task: FireTask, deliver_at: datetime) -> None:
        """Create the task (an existing task of the same id counts as created)."""
        ...


def deliver_at(task: FireTask, now: datetime) -> datetime:
    """When the task for `task`'s fire is delivered: at the fire, or, for a fire beyond the
    queue's horizon, at the horizon (a leg: delivered early, it only enqueues the next)."""
    return min(task.fire_at, now + HORIZON)


def judge(task: FireTask, current: dict[str, Any] | None, now: datetime) -> str | None:
    """What a delivered task does before anything fires, from the schedule's `current`
    state (`next_fire_at`, `resource_version`; None: deleted): "gone", "stale" (the schedule
    changed since the task was enqueued), "duplicate" (this fire was handled by an earlier
    delivery), "early" (a leg), or None: the fire is due."""
    if current is None:
        return "gone"
    if current["resource_version"] != task.version:
        return "stale"
    if current["next_fire_at"] != task.fire_at:
        return "duplicate"
    if now < task.fire_at - EARLY_TOLERANCE:
        return "early"
    return None


class TaskScheduler:
    def __init__(
        self,
        db: Database,
        firer: ScheduleFirer,
        queue: TaskQueue,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.firer = firer
        self.queue = queue
        self.clock = clock

    def sync(self, keys: Iterable[tuple[str, str]] | None = None) -> int:
        """Enqueue a task for every next fire that has none (only `keys` when given).
        Returns the tasks enqueued; raises if the queue fails (the rows stay untasked)."""
        wanted = sorted(set(keys)) if keys is not None else None
        enqueued = 0
        while True:
            rows = self._untasked(wanted)
            for row in rows:
                task = FireTask(row["namespace"], row["name"], row["version"], row["next_fire_at"])
                self.queue.enqueue(task, deliver_at(task, self.clock()))
                with self.db.transaction() as tx:
                    state.mark_tasked(tx, task.namespace, task.name, task.version, task.fire_at)
                enqueued += 1
            if wanted is not None or len(rows) < SYNC_BATCH:
                return enqueued

    def _untasked(self, keys: list[tuple[str, str]] | None) -> list[dict[str, Any]]:
        if keys == []:
            return []
        with self.db.transaction() as tx:
            return state.untasked(tx, keys, SYNC_BATCH)

    def deliver(self, task: FireTask) -> dict[str, Any]:
        """The callback: fire the task's slot (once, however often it is delivered), move the
        schedule to its next fire, and enqueue that. Raises (so the queue retries) when the
        database or the queue fails."""
        result = self._fire(task)
        if result["outcome"] != "gone":
            self.sync([(task.namespace, task.name)])
        return result

    def _fire(self, task: FireTask) -> dict[str, Any]:
        now = self.clock()
        with self.db.transaction() as tx:
            current = state.lock_with_manifest(tx, task.namespace, task.name)
            outcome = judge(task, current, now)
            if outcome is not None:
                answer = {"outcome": outcome}
                if outcome == "stale" and current is not None:
                    answer["version"] = str(current["resource_version"])
                if outcome == "early":
                    state.forget_task(tx, task.namespace, task.name)  # sync enqueues the next leg
                return answer
            assert current is not None  # judged "gone" otherwise
            spec = current["body"]
            slot, reason = slot_to_fire(spec, task.fire_at, now)
            fired: dict[str, Any] = {"outcome": "skipped"}
            if slot is not None:
                fired = self.firer.fire_in(tx, task.namespace, task.name, slot, reason)
                if not fired["claimed"]:
                    fired["outcome"] = "duplicate"
            upcoming = next_fire_after(spec, max(now, task.fire_at))
            state.move(tx, task.namespace, task.name, upcoming)
        return fired
