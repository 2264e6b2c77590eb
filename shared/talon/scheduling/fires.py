"""Firing a schedule: claim the (schedule, fire time) slot and post the wake message to the
target session, in one transaction, so a fire happens exactly once or not at all."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from talon.errors import NotFound
from talon.sessions.service import SessionService
from talon.sessions.turn_queue import NewTurn, queue_turns
from talon.store.database import Database, Tx
from talon.store.resources import require_namespace
from talon.telemetry import metrics, tracing

RECENT_FIRES = 10


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Fire:
    """One wake-up of a schedule: its slot, and the spec and version it fires with."""

    namespace: str
    name: str
    fire_at: datetime
    reason: str
    version: int
    spec: dict[str, Any]

    @property
    def session_id(self) -> str:
        target = self.spec["target"]
        if target.get("sessionMode", "named") == "named":
            return str(target["sessionId"])
        # A fresh session per fire, named after the schedule and the slot.
        return f"{self.name}-{self.fire_at.strftime('%Y%m%dT%H%M%SZ')}"


def _key(fire: Fire) -> tuple[str, str, int]:
    return fire.namespace, fire.name, int(fire.fire_at.timestamp())


class ScheduleFirer:
    def __init__(self, db: Database, sessions: SessionService) -> None:
        self.db = db
        self.sessions = sessions

    def fire(self, namespace: str, name: str, fire_at: datetime, reason: str) -> dict[str, Any]:
        """Wake the schedule's target for the slot `fire_at`; a slot already taken is a no-op
        (`claimed: false`)."""
        with self.db.transaction() as tx:
            return self.fire_in(tx, namespace, name, fire_at, reason)

    def fire_in(
        self, tx: Tx, namespace: str, name: str, fire_at: datetime, reason: str
    ) -> dict[str, Any]:
        """`fire` inside the caller's transaction (a scheduler callback that also moves the
        schedule's next fire time commits both or neither)."""
        schedule = tx.one(
            "SELECT resource_version, body FROM resources WHERE kind = 'Schedule' "
            "AND namespace = %s AND name = %s",
            (namespace, name),
        )
        if schedule is None:
            require_namespace(tx, namespace)
            raise NotFound(f"Schedule {name!r} not found in namespace {namespace!r}")
        fire = Fire(
            namespace, name, fire_at, reason, schedule["resource_version"], schedule["body"]
        )
        return self.fire_many(tx, [fire])[0]

    def fire_many(self, tx: Tx, fires: list[Fire]) -> list[dict[str, Any]]:
        """Claim every fire's slot and wake the claimed ones, with a handful of statements
        whatever the count (a scheduler tick fires hundreds at once). A wake that cannot
        happen (its session belongs to another agent) is recorded as the fire's outcome."""
        fires = [
            replace(f, fire_at=f.fire_at.astimezone(UTC).replace(microsecond=0)) for f in fires
        ]
        # Sessions first, so each fire's row is written once with its final outcome. A
        # duplicate fire ensures the same session its first delivery did: nothing stray.
        owners = self.sessions.ensure_many(
            tx, [(f.namespace, f.spec["target"]["agent"], f.session_id) for f in fires]
        )
        planned: list[tuple[Fire, NewTurn | None, str | None]] = []
        for fire in fires:
            uid, owner = owners[(fire.namespace, fire.session_id)]
            if owner != fire.spec["target"]["agent"]:
                refusal = f"session {fire.session_id!r} belongs to agent {owner!r}"
                planned.append((fire, None, refusal))
            else:
                # The fire starts the trace of the turn it wakes (the turn keeps its context).
                with tracing.span("schedule.fire", attributes={
                    "talon.namespace": fire.namespace, "talon.schedule": fire.name,
                    "talon.schedule.fire_at": _iso(fire.fire_at), "talon.reason": fire.reason,
                    "talon.schedule.lateness_seconds": _lateness(fire.fire_at),
                }):  # fmt: skip
                    wake = NewTurn(uid, fire.spec["inputMessage"], f"schedule:{fire.name}")
                planned.append((fire, wake, None))
        rows = tx.all(
            "INSERT INTO schedule_fires (namespace, schedule, fire_at, schedule_version, "
            "reason, outcome, session_id, turn_id, error) "
            "SELECT * FROM jsonb_to_recordset(%s::jsonb) AS f(namespace text, schedule text, "
            "fire_at timestamptz, schedule_version bigint, reason text, outcome text, "
            "session_id text, turn_id uuid, error text) "
            # Epoch seconds, not timestamptz: pg8000 parses timestamps with strptime, which
            # is most of a large batch's client time.
            "ON CONFLICT DO NOTHING RETURNING namespace, schedule, "
            "extract(epoch FROM fire_at)::bigint AS epoch, turn_id",
            (json.dumps([
                {"namespace": f.namespace, "schedule": f.name, "fire_at": _iso(f.fire_at),
                 "schedule_version": f.version, "reason": f.reason,
                 "outcome": "queued" if turn else "failed",
                 "session_id": f.session_id if turn else None,
                 "turn_id": str(turn.turn_id) if turn else None, "error": error}
                for f, turn, error in planned
            ]),),
        )  # fmt: skip
        claimed_turns = {r["turn_id"] for r in rows if r["turn_id"] is not None}
        failed = {
            (r["namespace"], r["schedule"], int(r["epoch"])) for r in rows if not r["turn_id"]
        }
        turns = [turn for _, turn, _ in planned if turn and turn.turn_id in claimed_turns]
        queued = {q.turn_id: q for q in queue_turns(tx, turns) if q is not None}
        results: list[dict[str, Any]] = []
        for fire, turn, error in planned:
            result: dict[str, Any] = {"claimed": False, "fireAt": _iso(fire.fire_at)}
            if turn is not None and turn.turn_id in queued:
                result.update(
                    claimed=True, outcome="queued", sessionId=fire.session_id,
                    turnId=str(turn.turn_id), streamFrom=queued[turn.turn_id].stream_from,
                )  # fmt: skip
                if fire.reason != "run":  # a manual run is not late for anything
                    lateness = max(0.0, _lateness(fire.fire_at))
                    metrics.schedule_lateness.record(lateness, {"namespace": fire.namespace})
            elif turn is None and (key := _key(fire)) in failed:
                failed.discard(key)  # a fire listed twice is claimed by its first listing
                result.update(claimed=True, outcome="failed", error=error)
            results.append(result)
        return results

    def recent(
        self, namespace: str, name: str, *, limit: int = RECENT_FIRES
    ) -> list[dict[str, Any]]:
        return self.recent_many([(namespace, name)], limit=limit)[(namespace, name)]

    def recent_many(
        self, schedules: list[tuple[str, str]], *, limit: int = RECENT_FIRES
    ) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """The latest fires of each (namespace, name), newest first, in one query."""
        found: dict[tuple[str, str], list[dict[str, Any]]] = {key: [] for key in schedules}
        if not schedules:
            return found
        with self.db.transaction() as tx:
            rows = tx.all(
                "SELECT f.* FROM jsonb_to_recordset(%s::jsonb) AS s(namespace text, name text) "
                "CROSS JOIN LATERAL (SELECT namespace, schedule, fire_at, reason, session_id, "
                "turn_id, outcome, error FROM schedule_fires WHERE namespace = s.namespace "
                "AND schedule = s.name ORDER BY fire_at DESC LIMIT %s) AS f",
                (json.dumps([{"namespace": ns, "name": n} for ns, n in schedules]), limit),
            )
        for r in rows:
            found[(r["namespace"], r["schedule"])].append(
                {"fireAt": _iso(r["fire_at"]), "reason": r["reason"],
                 "sessionId": r["session_id"],
                 "turnId": str(r["turn_id"]) if r["turn_id"] else None,
                 "outcome": r["outcome"], "error": r["error"]}
            )  # fmt: skip
        return found


def _lateness(fire_at: datetime) -> float:
    return round((datetime.now(UTC) - fire_at).total_seconds(), 3)
