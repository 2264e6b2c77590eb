"""Benchmark: N schedules due in the same minute on the `postgres` scheduler backend.

Starts its own durable PostgreSQL (fsync on, `track_commit_timestamp` on), applies N cron
schedules (each waking its own named session, created on the first wake), sets them all due
at the same instant, and runs `--loops` scheduler loop processes. Lateness of a fire is the
commit time of its wake (the transaction that claimed the slot and queued the message) minus
its fire time, read from PostgreSQL's commit timestamps. Checks that every schedule fired
exactly once and every wake queued one turn.

    .venv/bin/python bench/schedules.py --schedules 10000 --loops 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from talon.config import TenancySettings
from talon.resources.registry import parse_manifest
from talon.services import resource_service
from talon.store.connect import connector_from_url
from talon.store.database import Database
from talon.store.local_postgres import LocalPostgres
from talon.store.migrate import migrate
from talon.tenancy.tenant_policy import TenancyPolicy

ROOT = Path(__file__).resolve().parents[1]
API = "talon.dev/v1alpha1"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def manifests(count: int) -> list[dict]:
    profile = {"name": "demo", "model": {"provider": "demo", "name": "demo"}}
    items = [
        {"apiVersion": API, "kind": "Namespace", "metadata": {"name": "bench"}},
        {"apiVersion": API, "kind": "AgentTemplate",
         "metadata": {"name": "bench", "namespace": "bench"},
         "definition": {"modelPolicy": {"profiles": [profile]}, "systemPrompt": "Answer."}},
        {"apiVersion": API, "kind": "Agent", "metadata": {"name": "bot", "namespace": "bench"},
         "spec": {"templateRef": "bench"}},
    ]  # fmt: skip
    for n in range(count):
        items.append({
            "apiVersion": API, "kind": "Schedule",
            "metadata": {"name": f"s{n}", "namespace": "bench"},
            "spec": {"kind": "cron", "cron": "* * * * *", "timezone": "UTC",
                     "target": {"agent": "bot", "sessionMode": "named", "sessionId": f"t{n}"},
                     "inputMessage": "Time for the follow-up."},
        })  # fmt: skip
    return items


def loop_process(url: str) -> None:
    """One scheduler loop, as a worker runs it (without the turn consumer)."""
    import signal
    import threading

    from talon.scheduling.fires import ScheduleFirer
    from talon.scheduling.postgres_backend import LocalScheduler
    from talon.sessions.service import SessionService

    db = Database(connector_from_url(url, 10), pool_size=4)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    LocalScheduler(db, ScheduleFirer(db, SessionService(db))).run(stop)
    db.close()


def measure_round(db: Database, count: int, number: int) -> dict:
    """Make every schedule due at one instant a few seconds ahead, wait for all fires of that
    instant, and report their lateness (commit time of the wake minus the fire time)."""
    due = (datetime.now(UTC) + timedelta(seconds=5)).replace(microsecond=0)
    with db.transaction() as tx:
        tx.execute("UPDATE schedule_state SET next_fire_at = %s", (due,))
    deadline = time.monotonic() + 300
    fired = 0
    while fired < count and time.monotonic() < deadline:
        time.sleep(0.5)
        with db.transaction() as tx:
            fired = int(tx.scalar("SELECT count(*) FROM schedule_fires WHERE fire_at = %s", (due,)))
    with db.transaction() as tx:
        lateness = [
            float(r["late"]) for r in tx.all(
                "SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - fire_at) AS late "
                "FROM schedule_fires WHERE fire_at = %s", (due,),
            )
        ]  # fmt: skip
    return {
        "round": number,
        "sessions": "created by the wake" if number == 1 else "existing",
        "fired": fired,
        "lateness_ms": {"min": round(min(lateness) * 1000, 1),
                        "p50": round(percentile(lateness, 0.5) * 1000, 1),
                        "p99": round(percentile(lateness, 0.99) * 1000, 1),
                        "max": round(max(lateness) * 1000, 1)},
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--loops", type=int, default=2, help="scheduler loop processes")
    parser.add_argument("--loop-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loop_url:
        loop_process(args.loop_url)
        return 0

    root = Path(tempfile.mkdtemp(prefix="talon-bench-sched-"))
    root.chmod(0o755)
    pg = LocalPostgres(root / "pg", durable=True, options={"track_commit_timestamp": "on"})
    pg.start()
    pg.ensure_database("talon")
    url = pg.url("talon")
    db = Database(connector_from_url(url, 10), pool_size=2)
    migrate(db)
    # The wiring every process uses: schedule writes keep their firing state.
    service = resource_service(db, TenancyPolicy.from_settings(TenancySettings()))
    documents = manifests(args.schedules)
    started = time.perf_counter()
    for offset in range(0, len(documents), 1000):
        service.apply([parse_manifest(d) for d in documents[offset : offset + 1000]])
    applied_s = time.perf_counter() - started

    loops = [
        subprocess.Popen([sys.executable, __file__, "--loop-url", url], cwd=ROOT)
        for _ in range(args.loops)
    ]
    # Two rounds, all schedules due at one instant each: the first wake creates each named
    # session, the second finds it (the steady state).
    rounds = [measure_round(db, args.schedules, n) for n in (1, 2)]
    for loop in loops:
        loop.terminate()
        loop.wait(timeout=30)
    with db.transaction() as tx:
        per_schedule = tx.one(
            "SELECT count(DISTINCT schedule) AS schedules, count(*) AS fires, "
            "count(*) FILTER (WHERE outcome = 'queued') AS queued, "
            "count(DISTINCT fire_at) AS slots FROM schedule_fires"
        )
        turns = int(tx.scalar("SELECT count(*) FROM turns"))
        sessions = int(tx.scalar("SELECT count(*) FROM sessions"))
    exactly_once = (
        per_schedule["schedules"] == sessions == args.schedules
        and per_schedule["fires"] == per_schedule["queued"] == turns == 2 * args.schedules
        and per_schedule["slots"] == 2
    )  # fmt: skip
    result = {
        "schedules": args.schedules,
        "loops": args.loops,
        "apply_seconds": round(applied_s, 1),
        "fires": per_schedule["fires"],
        "turns_queued": turns,
        "exactly_once": exactly_once,
        "rounds": rounds,
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    db.close()
    pg.stop()
    shutil.rmtree(root, ignore_errors=True)
    return 0 if exactly_once else 1


if __name__ == "__main__":
    sys.exit(main())
