"""Schedule fires: `run`, exactly one wake per (schedule, fire time), session modes."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import samples
from conftest import ROOT, Api, read_stream
from talon import entrypoints
from talon.cli.manifest_files import read_documents

SESSIONS = "/v1/ns/acme/agents/customer-support/sessions"


@pytest.fixture
def acme(api: Api, monkeypatch: pytest.MonkeyPatch) -> Api:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    documents = [d.body for d in read_documents([str(ROOT / "manifests")])]
    api.ok("POST", "/v1/apply", json={"items": documents})
    return api


def test_run_wakes_the_seed_schedules_named_session(acme: Api, start_worker) -> None:
    start_worker(demo_fallback=True)
    fired = acme.ok("POST", "/v1/ns/acme/schedules/renewal-check/run", 202)
    assert fired["claimed"] is True and fired["outcome"] == "queued"
    assert fired["sessionId"] == "enterprise-renewals"
    events = read_stream(
        acme, f"{SESSIONS}/enterprise-renewals/stream",
        last_event_id=fired["streamFrom"], params={"untilTurnEnd": "true"},
    )  # fmt: skip
    queued = next(e for e in events if e["type"] == "turn.queued")
    assert queued["data"]["source"] == "schedule:renewal-check"
    assert events[-1]["type"] == "turn.completed"
    messages = acme.ok("GET", f"{SESSIONS}/enterprise-renewals/messages")["items"]
    assert messages[0]["content"].startswith("Review accounts renewing in the next 14 days")
    fires = acme.ok("GET", "/v1/ns/acme/schedules/renewal-check/fires")["items"]
    assert [(f["reason"], f["outcome"], f["turnId"]) for f in fires] == [
        ("run", "queued", fired["turnId"])
    ]


def test_get_schedule_shows_next_fire_and_last_fires(acme: Api) -> None:
    before = acme.ok("GET", "/v1/ns/acme/schedules/renewal-check")
    assert before["status"]["lastFires"] == []
    next_fire = datetime.fromisoformat(before["status"]["nextFireAt"].replace("Z", "+00:00"))
    assert next_fire > datetime.now(UTC)
    assert next_fire.astimezone(ZoneInfo("America/Los_Angeles")).hour == 14
    fired = acme.ok("POST", "/v1/ns/acme/schedules/renewal-check/run", 202)
    after = acme.ok("GET", "/v1/ns/acme/schedules/renewal-check")
    assert [(f["reason"], f["outcome"], f["turnId"]) for f in after["status"]["lastFires"]] == [
        ("run", "queued", fired["turnId"])
    ]


def test_a_fire_slot_is_claimed_exactly_once(acme: Api) -> None:
    firer = entrypoints.services().schedules
    slot = datetime(2026, 12, 1, 22, 0, tzinfo=UTC)
    results: list[dict[str, Any]] = []
    start = threading.Barrier(4)

    def fire() -> None:
        start.wait()
        results.append(firer.fire("acme", "renewal-check", slot, "cron"))

    threads = [threading.Thread(target=fire) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(r["claimed"] for r in results) == [False, False, False, True]
    assert firer.fire("acme", "renewal-check", slot, "cron")["claimed"] is False  # a retry
    messages = acme.ok("GET", f"{SESSIONS}/enterprise-renewals/messages")["items"]
    assert len(messages) == 1


def test_session_mode_new_opens_a_session_per_fire(acme: Api) -> None:
    schedule = samples.schedule("acme", name="daily-digest", agent_name="customer-support")
    schedule["spec"]["target"] = {"agent": "customer-support", "sessionMode": "new"}
    acme.ok("POST", "/v1/ns/acme/schedules", 201, json=schedule)
    firer = entrypoints.services().schedules
    first = firer.fire("acme", "daily-digest", datetime(2026, 12, 1, 8, tzinfo=UTC), "cron")
    second = firer.fire("acme", "daily-digest", datetime(2026, 12, 2, 8, tzinfo=UTC), "cron")
    assert first["sessionId"] == "daily-digest-20261201T080000Z"
    assert second["sessionId"] == "daily-digest-20261202T080000Z"
    listed = [s["id"] for s in acme.ok("GET", SESSIONS)["items"]]
    assert listed == ["daily-digest-20261201T080000Z", "daily-digest-20261202T080000Z"]


def test_a_fire_that_cannot_wake_is_recorded_not_retried(acme: Api) -> None:
    # The named session already belongs to another agent.
    acme.ok("POST", "/v1/ns/acme/agents", 201, json={
        "apiVersion": "talon.dev/v1alpha1", "kind": "Agent",
        "metadata": {"name": "other", "namespace": "acme"},
        "spec": {"templateRef": "customer-support", "features": {"customer_id": "c"}},
    })  # fmt: skip
    acme.ok("POST", "/v1/ns/acme/agents/other/sessions", 201, json={"id": "enterprise-renewals"})
    fired = acme.ok("POST", "/v1/ns/acme/schedules/renewal-check/run", 202)
    assert fired["outcome"] == "failed"
    assert "belongs to agent 'other'" in fired["error"]
    fires = acme.ok("GET", "/v1/ns/acme/schedules/renewal-check/fires")["items"]
    assert fires[0]["outcome"] == "failed" and "belongs to agent" in fires[0]["error"]


def test_run_and_fires_of_a_missing_schedule_are_404(acme: Api) -> None:
    assert acme.post("/v1/ns/acme/schedules/nope/run").status_code == 404
    assert acme.get("/v1/ns/acme/schedules/nope/fires").status_code == 404


def test_fires_shows_the_next_fire_time(acme: Api) -> None:
    from talon.scheduling.timing import next_fire_at

    listing = acme.ok("GET", "/v1/ns/acme/schedules/renewal-check/fires")
    assert listing["nextFireAt"].endswith(("21:00:00Z", "22:00:00Z"))  # 14:00 in Los Angeles
    spec = {"kind": "cron", "cron": "0 14 * * 1-5", "timezone": "America/Los_Angeles"}
    friday_evening = datetime(2026, 11, 28, 1, 0, tzinfo=UTC)  # Friday 17:00 PST
    assert next_fire_at(spec, friday_evening) == "2026-11-30T22:00:00Z"  # Monday 14:00 PST
    assert next_fire_at({**spec, "enabled": False}, friday_evening) is None
    once = {"kind": "once", "at": "2026-12-24T18:00:00Z"}
    assert next_fire_at(once, friday_evening) == "2026-12-24T18:00:00Z"
    assert next_fire_at(once, datetime(2027, 1, 1, tzinfo=UTC)) is None


@pytest.fixture
def host_in_kathmandu(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The gateway's host runs at UTC+05:45, a zone no schedule below uses: a wall time read
    in the host's zone instead of the schedule's would show."""
    import time

    monkeypatch.setenv("TZ", "Asia/Kathmandu")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("at", "timezone", "fires_at"),
    [
        ("2030-01-15T09:00:00", "America/New_York", "2030-01-15T14:00:00Z"),  # EST, UTC-5
        ("2030-07-15T09:00:00", "America/New_York", "2030-07-15T13:00:00Z"),  # EDT, UTC-4
        # 02:30 does not exist on 2030-03-10 in New York: the first valid instant after the
        # gap (03:00 EDT), as for cron.
        ("2030-03-10T02:30:00", "America/New_York", "2030-03-10T07:00:00Z"),
        # An explicit offset is what it says, whatever the time zone.
        ("2030-01-15T09:00:00+01:00", "America/New_York", "2030-01-15T08:00:00Z"),
    ],
)
def test_once_without_an_offset_is_read_in_the_schedules_time_zone(
    acme: Api, host_in_kathmandu: Any, at: str, timezone: str, fires_at: str
) -> None:
    once = samples.schedule("acme", name="once", agent_name="customer-support")
    del once["spec"]["cron"]
    once["spec"].update({"kind": "once", "at": at, "timezone": timezone})
    created = acme.ok("POST", "/v1/ns/acme/schedules", 201, json=once)
    assert created["spec"]["at"] == at  # kept as written: a later timezone change applies
    assert acme.ok("GET", "/v1/ns/acme/schedules/once")["status"]["nextFireAt"] == fires_at
    assert acme.ok("GET", "/v1/ns/acme/schedules/once/fires")["nextFireAt"] == fires_at
    assert _next("once") == datetime.fromisoformat(fires_at)  # what the loop will fire at


def test_changing_the_time_zone_moves_a_once_fire_with_it(acme: Api) -> None:
    once = samples.schedule("acme", name="once", agent_name="customer-support")
    del once["spec"]["cron"]
    once["spec"].update({"kind": "once", "at": "2030-01-15T09:00:00", "timezone": "UTC"})
    acme.ok("POST", "/v1/ns/acme/schedules", 201, json=once)
    patch = {"spec": {"timezone": "Asia/Tokyo"}}
    acme.ok("PATCH", "/v1/ns/acme/schedules/once", json=patch)
    fires = acme.ok("GET", "/v1/ns/acme/schedules/once/fires")
    assert fires["nextFireAt"] == "2030-01-15T00:00:00Z"


# --- the postgres backend loop ---------------------------------------------------------------


def _scheduler() -> Any:
    from talon.scheduling.postgres_backend import LocalScheduler

    services = entrypoints.services()
    return LocalScheduler(services.db, services.schedules)


def _set_next(name: str, at: datetime) -> None:
    with entrypoints.services().db.transaction() as tx:
        tx.execute("UPDATE schedule_state SET next_fire_at = %s WHERE name = %s", (at, name))


def _next(name: str) -> datetime | None:
    with entrypoints.services().db.transaction() as tx:
        return tx.scalar("SELECT next_fire_at FROM schedule_state WHERE name = %s", (name,))


def test_applying_a_schedule_sets_its_next_fire_from_now(acme: Api) -> None:
    upcoming = _next("renewal-check")
    assert upcoming is not None and upcoming > datetime.now(UTC)
    acme.ok("PATCH", "/v1/ns/acme/schedules/renewal-check", json={"spec": {"enabled": False}})
    assert _next("renewal-check") is None
    acme.ok("PATCH", "/v1/ns/acme/schedules/renewal-check", json={"spec": {"enabled": True}})
    assert _next("renewal-check") == upcoming  # re-enabling does not replay the pause


def test_the_loop_fires_a_due_schedule_once_and_moves_on(acme: Api) -> None:
    due = datetime(2026, 12, 1, 22, 0, tzinfo=UTC)  # Tuesday 14:00 in Los Angeles
    _set_next("renewal-check", due)
    scheduler = _scheduler()
    assert scheduler.tick(datetime(2026, 12, 1, 22, 0, 1, tzinfo=UTC)) == 1
    assert scheduler.tick(datetime(2026, 12, 1, 22, 0, 2, tzinfo=UTC)) == 0
    assert _next("renewal-check") == datetime(2026, 12, 2, 22, 0, tzinfo=UTC)
    fires = acme.ok("GET", "/v1/ns/acme/schedules/renewal-check/fires")["items"]
    assert [(f["fireAt"], f["reason"]) for f in fires] == [("2026-12-01T22:00:00Z", "cron")]


def test_two_loops_racing_fire_once(acme: Api) -> None:
    _set_next("renewal-check", datetime(2026, 12, 1, 22, 0, tzinfo=UTC))
    now = datetime(2026, 12, 1, 22, 0, 1, tzinfo=UTC)
    counts: list[int] = []
    start = threading.Barrier(2)

    def run() -> None:
        start.wait()
        counts.append(_scheduler().tick(now))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(counts) == [0, 1]


@pytest.mark.parametrize(("policy", "expected"), [("fireOnce", ["catch-up"]), ("skip", [])])
def test_missed_fires_after_downtime_follow_the_policy(
    acme: Api, policy: str, expected: list[str]
) -> None:
    acme.ok("PATCH", "/v1/ns/acme/schedules/renewal-check",
            json={"spec": {"missedFirePolicy": policy}})  # fmt: skip
    # The worker was down from Monday to Thursday afternoon: four weekday fires were missed.
    _set_next("renewal-check", datetime(2026, 11, 30, 22, 0, tzinfo=UTC))
    thursday = datetime(2026, 12, 3, 23, 30, tzinfo=UTC)
    _scheduler().tick(thursday)
    fires = acme.ok("GET", "/v1/ns/acme/schedules/renewal-check/fires")["items"]
    assert [f["reason"] for f in fires] == expected
    if expected:
        assert fires[0]["fireAt"] == "2026-12-03T22:00:00Z"  # the latest missed slot
    assert _next("renewal-check") == datetime(2026, 12, 4, 22, 0, tzinfo=UTC)


def test_a_tick_fires_a_batch_and_isolates_a_broken_schedule(
    acme: Api, caplog: pytest.LogCaptureFixture
) -> None:
    items = []
    for n in range(30):
        schedule = samples.schedule("acme", name=f"batch-{n}", agent_name="customer-support")
        schedule["spec"].update(cron="* * * * *", timezone="UTC")
        schedule["spec"]["target"]["sessionId"] = f"batch-{n}"
        items.append(schedule)
    items[7]["spec"]["inputMessage"] = "poison"
    items[9]["spec"]["target"]["sessionId"] = "taken"  # another agent's session
    acme.ok("POST", "/v1/apply", json={"items": items})
    acme.ok("POST", "/v1/ns/acme/agents", 201, json={
        "apiVersion": "talon.dev/v1alpha1", "kind": "Agent",
        "metadata": {"name": "other", "namespace": "acme"},
        "spec": {"templateRef": "customer-support", "features": {"customer_id": "c"}},
    })  # fmt: skip
    acme.ok("POST", "/v1/ns/acme/agents/other/sessions", 201, json={"id": "taken"})
    db = entrypoints.services().db
    with db.transaction() as tx:  # a real database failure for one schedule's message
        tx.execute(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.content = 'poison' THEN RAISE EXCEPTION 'poisoned message'; END IF; "
            "RETURN NEW; END $$"
        )
        tx.execute(
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON messages FOR EACH ROW "
            "EXECUTE FUNCTION refuse_poison()"
        )
    due = datetime(2026, 12, 1, 22, 0, tzinfo=UTC)
    with db.transaction() as tx:  # only the batch is due (not the seed's renewal-check)
        tx.execute(
            "UPDATE schedule_state SET next_fire_at = CASE WHEN name LIKE 'batch-%%' "
            "THEN %s::timestamptz END",
            (due,),
        )
    assert _scheduler().tick(due.replace(second=1)) == 29  # all but the poisoned one
    assert "schedule acme/batch-7 failed to fire: " in caplog.text
    for n in range(30):
        fires = acme.ok("GET", f"/v1/ns/acme/schedules/batch-{n}/fires")["items"]
        expected = {7: [], 9: ["failed"]}.get(n, ["queued"])
        assert [f["outcome"] for f in fires] == expected, n
        assert _next(f"batch-{n}") == datetime(2026, 12, 1, 22, 1, tzinfo=UTC)  # moved on
    with db.transaction() as tx:
        counts = tx.all(
            "SELECT s.id, count(t.id) AS turns FROM sessions s LEFT JOIN turns t "
            "ON t.session_uid = s.uid WHERE s.id LIKE 'batch-%%' GROUP BY s.id"
        )
    # The poisoned fire was rolled back whole (its session too); the others wake once.
    assert {r["id"]: r["turns"] for r in counts} == {
        f"batch-{n}": 1 for n in range(30) if n not in (7, 9)
    }
