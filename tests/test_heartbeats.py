"""Running turns' leases kept alive by the runner's heartbeats (`runtime/heartbeats.py`)
while a slow step runs."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from conftest import Api, tenancy_for_tests
from talon.runtime import heartbeats
from talon.runtime.turns import RunnerSettings, TurnRunner
from talon.store.database import Database
from talon.store.liveness import OwnerLock
from test_models import RecordingTools, _agent_with_policy, policy

LEASE_SECONDS = 1.2


def lease_threads() -> set[threading.Thread]:
    """Heartbeat threads alive now (other tests' runners may still have theirs)."""
    return {t for t in threading.enumerate() if t.name == "talon-lease"}


def short_lease_runner(db: Database, name: str) -> TurnRunner:
    """A live runner (its liveness lock held, as a Worker's is) whose leases last 1.2 s."""
    lock = OwnerLock(db.raw_connect, name, closed=lambda: db.closed)
    assert lock.wait_held(10)
    settings = RunnerSettings(name, lease_seconds=LEASE_SECONDS)
    return TurnRunner(db, RecordingTools(), settings, tenancy_for_tests())


def post(api: Api, db: Database, session: str, text: str) -> uuid.UUID:
    base = "/v1/ns/acme/agents/bot/sessions"
    if session != "s1":
        api.ok("POST", base, 201, json={"id": session})
    api.ok("POST", f"{base}/{session}/message", 202, json={"content": text})
    with db.transaction() as tx:
        return tx.scalar("SELECT uid FROM sessions WHERE id = %s", (session,))


class LeaseWatch:
    """Per session, the seconds its running turn's lease has left, every 50 ms."""

    def __init__(self, db: Database) -> None:
        self.left: dict[uuid.UUID, list[float]] = {}
        self._db = db
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            with self._db.transaction() as tx:
                rows = tx.all("SELECT session_uid, extract(epoch FROM lease_expires_at - now())"
                              "::float AS left FROM turns WHERE state = 'running'")  # fmt: skip
            for row in rows:
                self.left.setdefault(row["session_uid"], []).append(row["left"])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def drive_all(runner: TurnRunner, sessions: list[uuid.UUID]) -> list[threading.Thread]:
    drivers = [threading.Thread(target=runner.drive, args=(uid,)) for uid in sessions]
    for driver in drivers:
        driver.start()
    return drivers


def wait_running(db: Database, count: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with db.transaction() as tx:
            if tx.scalar("SELECT count(*) FROM turns WHERE state = 'running'") == count:
                return
        time.sleep(0.02)
    raise AssertionError(f"{count} turns never ran at once")


def test_slow_model_calls_keep_their_leases_from_one_thread(
    api: Api, db: Database, model_server: Any
) -> None:
    """Two turns whose model calls take twice the lease: both leases are renewed all along,
    from one heartbeat thread, and neither turn is taken over (one attempt each)."""
    _agent_with_policy(api, policy(model_server.url, "primary"))
    model_server.add({"hang": 2.5, "content": "slow one"}, {"hang": 2.5, "content": "slow two"})
    sessions = [post(api, db, "s1", "first"), post(api, db, "s2", "second")]
    runner = short_lease_runner(db, "worker-hb")
    before = lease_threads()
    watch = LeaseWatch(db)
    drivers = drive_all(runner, sessions)
    time.sleep(1.0)
    assert len(lease_threads() - before) == 1  # one heartbeat thread for both turns
    for driver in drivers:
        driver.join(30)
    watch.stop()
    assert sorted(watch.left) == sorted(sessions)
    for left in watch.left.values():
        assert len(left) > 20
        assert min(left) > 0, "a running turn's lease lapsed"
    with db.transaction() as tx:
        turns = tx.all("SELECT state, attempts FROM turns ORDER BY created_at")
    assert [(t["state"], t["attempts"]) for t in turns] == [("completed", 1), ("completed", 1)]


def test_a_stalled_renewal_delays_no_other_turn(api: Api, db: Database, model_server: Any) -> None:
    """One turn's renewal waits for its session row, which another transaction holds past
    that turn's lease; the other turn's renewals go on all the while."""
    _agent_with_policy(api, policy(model_server.url, "primary"))
    model_server.add({"hang": 3.0, "content": "one"}, {"hang": 3.0, "content": "two"})
    stalled, other = post(api, db, "s1", "first"), post(api, db, "s2", "second")
    runner = short_lease_runner(db, "worker-stall")
    watch = LeaseWatch(db)
    drivers = drive_all(runner, [stalled, other])
    wait_running(db, 2)  # claimed (a claim takes the session row too)
    with db.transaction() as tx:
        tx.execute("SELECT 1 FROM sessions WHERE uid = %s FOR UPDATE", (stalled,))
        time.sleep(2.0)
    for driver in drivers:
        driver.join(30)
    watch.stop()
    assert min(watch.left[stalled]) < 0  # the stall happened: that lease lapsed
    assert min(watch.left[other]) > 0, "the other turn's lease lapsed behind the stall"
    with db.transaction() as tx:
        assert tx.scalar("SELECT count(*) FROM turns WHERE state = 'completed'") == 2


def test_a_turn_after_an_idle_spell_is_renewed_too(
    api: Api, db: Database, model_server: Any
) -> None:
    """Once no turn runs, the thread waits a long while (a minute) for one: a turn starting
    then must wake it, or its lease lapses. And it waits out that minute: quick turns in
    between do not end it (each would start a thread again)."""
    _agent_with_policy(api, policy(model_server.url, "primary"))
    model_server.add({"content": "quick"}, {"content": "quick"}, {"hang": 2.5, "content": "slow"})
    runner = short_lease_runner(db, "worker-spell")
    before = lease_threads()
    runner.drive(post(api, db, "s1", "first"))
    (thread,) = lease_threads() - before
    time.sleep(LEASE_SECONDS / 3 + 0.3)  # the first turn's renewal came due: nothing to renew
    runner.drive(post(api, db, "s2", "second"))
    time.sleep(0.3)
    assert thread.is_alive()
    watch = LeaseWatch(db)
    third = post(api, db, "s3", "third")
    runner.drive(third)
    watch.stop()
    assert len(watch.left[third]) > 20
    assert min(watch.left[third]) > 0, "the running turn's lease lapsed"
    assert lease_threads() - before == {thread}


def test_the_thread_ends_when_no_turn_runs_and_starts_again(
    api: Api, db: Database, model_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(heartbeats, "IDLE_SECONDS", 0.2)
    _agent_with_policy(api, policy(model_server.url, "primary"))
    model_server.add({"hang": 0.2, "content": "one"}, {"hang": 0.2, "content": "two"})
    runner = short_lease_runner(db, "worker-idle")
    before = lease_threads()
    runner.drive(post(api, db, "s1", "first"))
    deadline = time.monotonic() + 5
    while lease_threads() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not lease_threads() - before
    assert runner.drive(post(api, db, "s2", "second")) is None  # started again, and done
    with db.transaction() as tx:
        assert tx.scalar("SELECT count(*) FROM turns WHERE state = 'completed'") == 2
