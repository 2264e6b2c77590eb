"""Running turns' leases kept alive by the runner's one heartbeat thread
(`runtime/heartbeats.py`) while a slow step runs."""

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


def watch_leases(db: Database, stop: threading.Event) -> list[tuple[float, float]]:
    """(seconds the running turns' leases had left, at most and at least) every 50 ms."""
    seen: list[tuple[float, float]] = []
    while not stop.wait(0.05):
        with db.transaction() as tx:
            row = tx.one("SELECT extract(epoch FROM max(lease_expires_at) - now())::float AS hi, "
                         "extract(epoch FROM min(lease_expires_at) - now())::float AS lo "
                         "FROM turns WHERE state = 'running'")  # fmt: skip
        if row is not None and row["lo"] is not None:
            seen.append((row["hi"], row["lo"]))
    return seen


def test_slow_model_calls_keep_their_leases_from_one_thread(
    api: Api, db: Database, model_server: Any
) -> None:
    """Two turns whose model calls take twice the lease: both leases are renewed all along,
    by one thread, and neither turn is taken over (one attempt each)."""
    _agent_with_policy(api, policy(model_server.url, "primary"))
    model_server.add({"hang": 2.5, "content": "slow one"}, {"hang": 2.5, "content": "slow two"})
    sessions = [post(api, db, "s1", "first"), post(api, db, "s2", "second")]
    runner = short_lease_runner(db, "worker-hb")
    before = lease_threads()
    stop, seen = threading.Event(), []
    watcher = threading.Thread(target=lambda: seen.extend(watch_leases(db, stop)))
    watcher.start()
    drivers = [threading.Thread(target=runner.drive, args=(uid,)) for uid in sessions]
    for driver in drivers:
        driver.start()
    time.sleep(1.0)
    assert len(lease_threads() - before) == 1  # one heartbeat thread for both turns
    for driver in drivers:
        driver.join(30)
    stop.set()
    watcher.join(5)
    assert len(seen) > 20
    assert min(lo for _, lo in seen) > 0, "a running turn's lease lapsed"
    with db.transaction() as tx:
        turns = tx.all("SELECT state, attempts FROM turns ORDER BY created_at")
    assert [(t["state"], t["attempts"]) for t in turns] == [("completed", 1), ("completed", 1)]


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


def test_a_turn_after_an_idle_spell_is_renewed_too(
    api: Api, db: Database, model_server: Any
) -> None:
    """Once no turn runs, the thread waits a long while (a minute) for one: a turn starting
    then must wake it, or its lease lapses."""
    _agent_with_policy(api, policy(model_server.url, "primary"))
    model_server.add({"content": "quick"}, {"hang": 2.5, "content": "slow"})
    runner = short_lease_runner(db, "worker-spell")
    runner.drive(post(api, db, "s1", "first"))
    time.sleep(LEASE_SECONDS / 3 + 0.3)  # the first turn's renewal came due: nothing to renew
    stop, seen = threading.Event(), []
    watcher = threading.Thread(target=lambda: seen.extend(watch_leases(db, stop)))
    watcher.start()
    runner.drive(post(api, db, "s2", "second"))
    stop.set()
    watcher.join(5)
    assert len(seen) > 20
    assert min(lo for _, lo in seen) > 0, "the running turn's lease lapsed"
