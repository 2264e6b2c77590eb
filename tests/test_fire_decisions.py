"""What the `cloud_tasks` backend decides for a delivered task (scheduling/tasks.py: gone,
stale, duplicate, early, due), how a fire beyond the queue's horizon travels in legs, and
which slot a late fire takes (scheduling/timing.py), against an in-memory task queue as
strict as Cloud Tasks about what it accepts. test_cloud_tasks.py runs the same paths through
the emulator and PostgreSQL; these cover every branch without either."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from talon.errors import BadRequest
from talon.scheduling.tasks import EARLY_TOLERANCE, HORIZON, FireTask, deliver_at, judge
from talon.scheduling.timing import SKIP_GRACE, slot_to_fire

pytestmark = pytest.mark.fast

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
CLOUD_TASKS_LIMIT = timedelta(days=30)  # Cloud Tasks refuses a schedule_time further ahead


class MemoryQueue:
    """A TaskQueue: tasks by id, refusing what Cloud Tasks refuses (a schedule time beyond
    30 days); an id enqueued again is the same task (Cloud Tasks answers ALREADY_EXISTS,
    which the adapter counts as created)."""

    def __init__(self, clock: list[datetime]) -> None:
        self.clock = clock  # [now], moved by the test
        self.tasks: dict[str, tuple[datetime, FireTask]] = {}
        self.enqueued = 0

    def enqueue(self, task: FireTask, deliver_at: datetime) -> None:
        if deliver_at - self.clock[0] > CLOUD_TASKS_LIMIT:
            raise ValueError("schedule_time is more than 30 days in the future")
        self.enqueued += 1
        self.tasks.setdefault(task.task_id(deliver_at), (deliver_at, task))

    def deliver_next(self) -> FireTask:
        """The earliest task, at its time (the clock moves there)."""
        task_id = min(self.tasks, key=lambda k: self.tasks[k][0])
        at, task = self.tasks.pop(task_id)
        self.clock[0] = max(self.clock[0], at)
        return task


def state(fire_at: datetime, version: int = 3) -> dict[str, Any]:
    """A schedule's row as the callback reads it."""
    return {"next_fire_at": fire_at, "resource_version": version}


def test_a_fire_within_the_horizon_is_one_task_delivered_at_its_time() -> None:
    task = FireTask("acme", "renewal-check", 3, T0 + timedelta(hours=5))
    assert deliver_at(task, T0) == task.fire_at
    assert judge(task, state(task.fire_at), task.fire_at) is None  # due: fire it


def test_a_fire_beyond_the_horizon_travels_in_legs_each_early_until_the_last() -> None:
    clock = [T0]
    queue = MemoryQueue(clock)
    task = FireTask("acme", "renewal-check", 3, T0 + timedelta(days=70))
    current = state(task.fire_at)
    queue.enqueue(task, deliver_at(task, clock[0]))  # what the write's sync does
    legs, outcomes = [], []
    while True:
        delivered = queue.deliver_next()
        legs.append(clock[0])
        outcome = judge(delivered, current, clock[0])
        outcomes.append(outcome)
        if outcome != "early":
            break
        # The callback forgets the leg's task; its sync enqueues the next leg.
        queue.enqueue(delivered, deliver_at(delivered, clock[0]))
    assert outcomes == ["early", "early", None]
    assert legs == [T0 + HORIZON, T0 + 2 * HORIZON, task.fire_at]
    # Each leg has its own task id (Cloud Tasks would refuse a reused name), and the same
    # leg enqueued twice is one task.
    assert len({task.task_id(at) for at in legs}) == 3
    queue.enqueue(task, task.fire_at)
    queue.enqueue(task, task.fire_at)
    assert len(queue.tasks) == 1


def test_the_queue_refuses_a_delivery_beyond_30_days_so_legs_are_needed() -> None:
    queue = MemoryQueue([T0])
    task = FireTask("acme", "far", 1, T0 + timedelta(days=45))
    with pytest.raises(ValueError, match="30 days"):
        queue.enqueue(task, task.fire_at)
    queue.enqueue(task, deliver_at(task, T0))  # a leg at the horizon is accepted


def test_a_delivery_a_moment_before_its_fire_is_on_time_not_early() -> None:
    task = FireTask("acme", "renewal-check", 3, T0)
    assert judge(task, state(T0), T0 - EARLY_TOLERANCE / 2) is None
    assert judge(task, state(T0), T0 - EARLY_TOLERANCE * 2) == "early"


@pytest.mark.parametrize(
    ("current", "outcome"),
    [
        (None, "gone"),  # the schedule was deleted since the task was enqueued
        (state(T0, version=4), "stale"),  # it was updated: the new version has its own task
        (state(T0 + timedelta(hours=1)), "duplicate"),  # an earlier delivery fired this one
    ],
)
def test_a_task_that_no_longer_matches_its_schedule_does_nothing(
    current: dict[str, Any] | None, outcome: str
) -> None:
    assert judge(FireTask("acme", "renewal-check", 3, T0), current, T0) == outcome


def test_a_task_travels_as_json_and_back() -> None:
    task = FireTask("acme", "renewal-check", 17, T0)
    body = task.to_json()
    assert body == {"namespace": "acme", "name": "renewal-check", "version": "17",
                    "fireAt": "2026-03-02T09:00:00Z"}  # fmt: skip
    assert FireTask.from_json(body) == task
    offset = {**body, "fireAt": "2026-03-02T10:00:00+01:00"}  # the same instant
    assert FireTask.from_json(offset) == task


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"name": "n", "version": "1", "fireAt": "2026-03-02T09:00:00Z"}, "namespace"),
        ({"namespace": "a", "name": "n", "version": 1, "fireAt": "2026-03-02T09:00:00Z"},
         "version"),
        ({"namespace": "a", "name": "n", "version": "v1", "fireAt": "2026-03-02T09:00:00Z"},
         "version"),
        ({"namespace": "a", "name": "n", "version": "1", "fireAt": "tomorrow"}, "fireAt"),
        ({"namespace": "a", "name": "n", "version": "1", "fireAt": "2026-03-02T09:00:00"},
         "fireAt"),
    ],
)  # fmt: skip
def test_a_malformed_task_is_refused_naming_the_field(body: dict[str, Any], path: str) -> None:
    with pytest.raises(BadRequest) as caught:
        FireTask.from_json(body)
    assert path in [d["path"] for d in caught.value.details]


def test_a_task_body_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(BadRequest, match="must be a JSON object"):
        FireTask.from_json(["acme", "renewal-check"])


HOURLY = {"kind": "cron", "cron": "0 * * * *", "timezone": "UTC"}


def test_an_on_time_fire_takes_its_own_slot() -> None:
    assert slot_to_fire(HOURLY, T0, T0 + timedelta(seconds=3)) == (T0, "cron")


def test_after_downtime_fire_once_takes_the_latest_missed_slot() -> None:
    now = T0 + timedelta(hours=5, minutes=10)
    assert slot_to_fire(HOURLY, T0, now) == (T0 + timedelta(hours=5), "catch-up")


def test_skip_drops_missed_fires_unless_the_latest_is_within_the_grace() -> None:
    spec = {**HOURLY, "missedFirePolicy": "skip"}
    late = T0 + timedelta(hours=5) + SKIP_GRACE + timedelta(seconds=1)
    assert slot_to_fire(spec, T0, late) == (None, "cron")
    just = T0 + timedelta(hours=5) + SKIP_GRACE / 2
    assert slot_to_fire(spec, T0, just) == (T0 + timedelta(hours=5), "cron")
    # A single late fire, the same rule.
    assert slot_to_fire(spec, T0, T0 + SKIP_GRACE * 2) == (None, "cron")


def test_a_once_schedule_fires_late_unless_it_skips() -> None:
    once = {"kind": "once", "at": "2026-03-02T09:00:00Z", "timezone": "UTC"}
    late = T0 + timedelta(hours=2)
    assert slot_to_fire(once, T0, late) == (T0, "once")
    assert slot_to_fire({**once, "missedFirePolicy": "skip"}, T0, late) == (None, "once")
