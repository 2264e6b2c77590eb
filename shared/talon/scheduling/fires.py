"""Firing a schedule: claim the (schedule, fire time) slot and post the wake message to the
target session, in one transaction, so a fire happens exactly once or not at all."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from talon.errors import NotFound, TalonError
from talon.sessions.models import PostMessage
from talon.sessions.service import SessionService
from talon.store.database import Database, Tx
from talon.store.resources import require_namespace

RECENT_FIRES = 10


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


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
        fire_at = fire_at.astimezone(UTC).replace(microsecond=0)
        schedule = tx.one(
            "SELECT resource_version, body FROM resources WHERE kind = 'Schedule' "
            "AND namespace = %s AND name = %s",
            (namespace, name),
        )
        if schedule is None:
            require_namespace(tx, namespace)
            raise NotFound(f"Schedule {name!r} not found in namespace {namespace!r}")
        claimed = tx.one(
            "INSERT INTO schedule_fires (namespace, schedule, fire_at, schedule_version, "
            "reason, outcome) VALUES (%s, %s, %s, %s, %s, 'claimed') "
            "ON CONFLICT DO NOTHING RETURNING fire_at",
            (namespace, name, fire_at, schedule["resource_version"], reason),
        )
        if claimed is None:
            return {"claimed": False, "fireAt": _iso(fire_at)}
        spec = schedule["body"]
        try:
            result = self._wake(tx, namespace, name, spec, fire_at)
        except TalonError as exc:  # recorded as the fire's outcome, not retried
            self._outcome(tx, namespace, name, fire_at, "failed", error=exc.message)
            return {"claimed": True, "fireAt": _iso(fire_at), "outcome": "failed",
                    "error": exc.message}  # fmt: skip
        return {"claimed": True, "fireAt": _iso(fire_at), "outcome": "queued", **result}

    def recent(self, namespace: str, name: str) -> list[dict[str, Any]]:
        with self.db.transaction() as tx:
            rows = tx.all(
                "SELECT fire_at, reason, session_id, turn_id, outcome, error FROM schedule_fires "
                "WHERE namespace = %s AND schedule = %s ORDER BY fire_at DESC LIMIT %s",
                (namespace, name, RECENT_FIRES),
            )
        return [
            {"fireAt": _iso(r["fire_at"]), "reason": r["reason"], "sessionId": r["session_id"],
             "turnId": str(r["turn_id"]) if r["turn_id"] else None, "outcome": r["outcome"],
             "error": r["error"]}
            for r in rows
        ]  # fmt: skip

    def _wake(
        self, tx: Tx, namespace: str, name: str, spec: dict[str, Any], fire_at: datetime
    ) -> dict[str, Any]:
        target = spec["target"]
        agent = target["agent"]
        if target.get("sessionMode", "named") == "named":
            session_id = target["sessionId"]
        else:  # a fresh session per fire, named after the schedule and the slot
            session_id = f"{name}-{fire_at.strftime('%Y%m%dT%H%M%SZ')}"
        self.sessions.ensure_in(tx, namespace, agent, session_id)
        accepted = self.sessions.post_in(
            tx, namespace, agent, session_id, PostMessage(content=spec["inputMessage"]),
            source=f"schedule:{name}",
        )  # fmt: skip
        self._outcome(tx, namespace, name, fire_at, "queued", session_id=session_id,
                      turn_id=accepted.turn_id)  # fmt: skip
        return {"sessionId": session_id, "turnId": accepted.turn_id,
                "streamFrom": accepted.stream_from}  # fmt: skip

    @staticmethod
    def _outcome(
        tx: Tx, namespace: str, name: str, fire_at: datetime, outcome: str, *,
        session_id: str | None = None, turn_id: str | None = None, error: str | None = None,
    ) -> None:  # fmt: skip
        tx.execute(
            "UPDATE schedule_fires SET outcome = %s, session_id = %s, turn_id = %s::uuid, "
            "error = %s WHERE namespace = %s AND schedule = %s AND fire_at = %s",
            (outcome, session_id, turn_id, error, namespace, name, fire_at),
        )
