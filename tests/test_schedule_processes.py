"""The postgres scheduler backend with real `talon worker` processes: two compete for the same
due schedule, and a worker stopped across a due time catches up by the missed-fire policy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from conftest import ROOT, Api
from talon.cli.manifest_files import read_documents
from talon.store.database import Database

pytestmark = pytest.mark.slow


def _worker(database_url: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALON_")}
    env.pop("OPENAI_API_KEY", None)
    env["TALON_CONTROL_PLANE_DATABASE_URL"] = database_url
    env["TALON_LOG_LEVEL"] = "WARNING"
    return subprocess.Popen(
        [sys.executable, "-m", "talon.cli.main", "worker", "--demo-fallback"],
        cwd=ROOT, env=env, stderr=subprocess.PIPE,
    )  # fmt: skip


def _stop(process: subprocess.Popen[bytes]) -> str:
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    return err.decode()


def _fires(db: Database) -> list[dict]:
    with db.transaction() as tx:
        return tx.all("SELECT fire_at, reason, outcome FROM schedule_fires ORDER BY fire_at")


def _wait(predicate, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _seed(api: Api) -> None:
    documents = [d.body for d in read_documents([str(ROOT / "manifests")])]
    api.ok("POST", "/v1/apply", json={"items": documents})
    # Every minute, so the due times below are real fire times.
    api.ok("PATCH", "/v1/ns/acme/schedules/renewal-check",
           json={"spec": {"cron": "* * * * *", "timezone": "UTC"}})  # fmt: skip


def test_two_worker_processes_fire_a_due_schedule_once(
    api: Api, db: Database, database_url: str
) -> None:
    _seed(api)
    if datetime.now(UTC).second > 40:  # keep the next minute's fire out of this test
        time.sleep(61 - datetime.now(UTC).second)
    due = datetime.now(UTC).replace(second=0, microsecond=0)
    with db.transaction() as tx:
        tx.execute("UPDATE schedule_state SET next_fire_at = %s", (due,))
    workers = [_worker(database_url), _worker(database_url)]
    try:
        _wait(lambda: len(_fires(db)) >= 1)
        time.sleep(2)  # both loops have ticked several times by now
    finally:
        errors = [_stop(w) for w in workers]
    assert all("Traceback" not in e for e in errors), errors
    fires = _fires(db)
    assert [(f["fire_at"], f["outcome"]) for f in fires] == [(due, "queued")]
    messages = api.ok("GET", "/v1/ns/acme/agents/customer-support/sessions/"
                      "enterprise-renewals/messages")["items"]  # fmt: skip
    assert [m["role"] for m in messages] == ["user", "assistant"]


def test_a_worker_stopped_across_due_times_catches_up_once(
    api: Api, db: Database, database_url: str
) -> None:
    _seed(api)
    # The worker was down for the last three minutes: three fire times were missed.
    missed_from = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=3)
    with db.transaction() as tx:
        tx.execute("UPDATE schedule_state SET next_fire_at = %s", (missed_from,))
    worker = _worker(database_url)
    try:
        _wait(lambda: len(_fires(db)) >= 1)
        time.sleep(1.5)
    finally:
        errors = _stop(worker)
    assert "Traceback" not in errors, errors
    fires = _fires(db)
    assert len(fires) in (1, 2)  # the catch-up, and possibly the next minute's own fire
    assert fires[0]["reason"] == "catch-up"
    assert fires[0]["fire_at"] > missed_from
