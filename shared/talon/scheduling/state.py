"""`schedule_state`: when each schedule fires next, and (with the `cloud_tasks` backend)
which fire already has a task. Every statement on the table is here; the modules that
decide what to write are the resource hook (`state_hook.py`, in step with the manifest),
the `postgres` loop (`postgres_backend.py`) and the `cloud_tasks` backend (`tasks.py`).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from talon.scheduling.timing import next_fire_after
from talon.store.database import Tx

Key = tuple[str, str, str]  # (next fire as epoch seconds, namespace, name): a due batch's keyset


def upsert(tx: Tx, namespace: str, name: str, version: int, next_fire_at: datetime | None) -> None:
    """The schedule's state after its manifest was written (a new version forgets the
    task of the old one: its version no longer matches)."""
    tx.execute(
        "INSERT INTO schedule_state (namespace, name, version, next_fire_at) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT (namespace, name) DO UPDATE SET "
        "version = EXCLUDED.version, next_fire_at = EXCLUDED.next_fire_at",
        (namespace, name, version, next_fire_at),
    )


def delete(tx: Tx, namespace: str, name: str) -> None:
    tx.execute("DELETE FROM schedule_state WHERE namespace = %s AND name = %s", (namespace, name))


def adopt_unknown(tx: Tx, now: datetime) -> None:
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


def next_due(tx: Tx) -> datetime | None:
    due: datetime | None = tx.scalar("SELECT min(next_fire_at) FROM schedule_state")
    return due


def lock_due(tx: Tx, now: datetime, after: Key | None, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` schedules due at `now` (after the keyset `after`), locked and skipping
    rows another loop holds, with their manifests: namespace, name, due (epoch seconds),
    resource_version, body."""
    # Keyset from the previous batch: the rows it moved left dead entries at the front of
    # the due index, which an OFFSET-less rescan would wade through every time.
    where = ""
    params: tuple[str, ...] = ()
    if after is not None:
        where = (
            "AND (st.next_fire_at, st.namespace, st.name) > "
            "('epoch'::timestamptz + %s::numeric * interval '1 second', %s, %s) "
        )
        params = after
    # Lock the due rows first, then join their manifests: the planner cannot turn the join
    # into a hash of every schedule, whatever its statistics say.
    return tx.all(
        "WITH due AS (SELECT st.namespace, st.name, st.next_fire_at "
        "FROM schedule_state st "
        f"WHERE st.next_fire_at <= %s {where}"
        "ORDER BY st.next_fire_at, st.namespace, st.name LIMIT %s "
        "FOR UPDATE SKIP LOCKED) "
        "SELECT due.namespace, due.name, extract(epoch FROM due.next_fire_at) AS due, "
        "r.resource_version, r.body FROM due JOIN resources r ON r.kind = 'Schedule' "
        "AND r.namespace = due.namespace AND r.name = due.name "
        "ORDER BY due.next_fire_at, due.namespace, due.name",
        (now, *params, limit),
    )


def move_many(tx: Tx, moves: list[tuple[str, str, datetime | None]]) -> None:
    """Set each (namespace, name)'s next fire, in one statement."""
    rows = [
        {"namespace": ns, "name": name, "next": at.isoformat() if at is not None else None}
        for ns, name, at in moves
    ]
    tx.execute(
        "UPDATE schedule_state st SET next_fire_at = n.next FROM jsonb_to_recordset("
        "%s::jsonb) AS n(namespace text, name text, next timestamptz) "
        "WHERE st.namespace = n.namespace AND st.name = n.name",
        (json.dumps(rows),),
    )


def move(tx: Tx, namespace: str, name: str, next_fire_at: datetime | None) -> None:
    tx.execute(
        "UPDATE schedule_state SET next_fire_at = %s WHERE namespace = %s AND name = %s",
        (next_fire_at, namespace, name),
    )


def untasked(tx: Tx, keys: list[tuple[str, str]] | None, limit: int) -> list[dict[str, Any]]:
    """Next fires that have no task for their fire and version (of `keys` when given):
    namespace, name, version, next_fire_at; soonest first."""
    where, params = "", []
    if keys is not None:
        where = "AND (namespace, name) IN (" + ", ".join(["(%s, %s)"] * len(keys)) + ")"
        params = [part for key in keys for part in key]
    return tx.all(
        "SELECT namespace, name, version, next_fire_at FROM schedule_state "
        "WHERE next_fire_at IS NOT NULL AND (task_fire_at IS DISTINCT FROM next_fire_at "
        f"OR task_version IS DISTINCT FROM version) {where} "
        "ORDER BY next_fire_at LIMIT %s",
        (*params, limit),
    )


def mark_tasked(tx: Tx, namespace: str, name: str, version: int, fire_at: datetime) -> None:
    """The fire at `fire_at` of this version has its task (unless the schedule moved on)."""
    tx.execute(
        "UPDATE schedule_state SET task_fire_at = next_fire_at, "
        "task_version = version WHERE namespace = %s AND name = %s "
        "AND version = %s AND next_fire_at = %s",
        (namespace, name, version, fire_at),
    )


def forget_task(tx: Tx, namespace: str, name: str) -> None:
    """The fire's task was a leg: the next sync enqueues the next one."""
    tx.execute(
        "UPDATE schedule_state SET task_fire_at = NULL WHERE namespace = %s AND name = %s",
        (namespace, name),
    )


def lock_with_manifest(tx: Tx, namespace: str, name: str) -> dict[str, Any] | None:
    """The schedule's state, locked, with its manifest: next_fire_at, resource_version,
    body; None when either is gone."""
    return tx.one(
        "SELECT st.next_fire_at, r.resource_version, r.body FROM schedule_state st "
        "JOIN resources r ON r.kind = 'Schedule' AND r.namespace = st.namespace "
        "AND r.name = st.name WHERE st.namespace = %s AND st.name = %s "
        "FOR UPDATE OF st",
        (namespace, name),
    )
