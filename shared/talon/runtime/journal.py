"""The step journal of one turn, written under the turn's lease and fencing token."""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from talon.sessions import events
from talon.store.database import Database, Tx, jsonb

log = logging.getLogger(__name__)

# Step names, as the seed's stream shows them (tool steps are `call-<tool>`).
KNOWLEDGE = "load-knowledge"
MODEL = "call-model"
WRITE = "write-next-message"


class Fenced(Exception):
    """The turn was cancelled, deleted or taken over by another worker: stop writing."""


@dataclass(frozen=True)
class Step:
    idx: int
    name: str
    kind: str
    state: str
    output: dict[str, Any]


@dataclass(frozen=True)
class Lease:
    turn_id: uuid.UUID
    session_uid: uuid.UUID
    token: int
    seconds: float


# Lock the session row, then extend the turn's lease if this worker still holds it (fencing
# token, state): the CTE's row lock is taken while the join reads the session, before the
# UPDATE locks the turn row it produces. The statements below continue it; `r` has a row
# only if the lease held.
_RENEW_CTE = (
    "WITH s AS (SELECT uid FROM sessions WHERE uid = %s FOR UPDATE), "
    "r AS (UPDATE turns SET lease_expires_at = now() + make_interval(secs => %s) FROM s "
    "WHERE turns.id = %s AND turns.session_uid = s.uid AND fencing_token = %s "
    "AND state = 'running' RETURNING 1)"
)
_STEP_COLUMNS = "(turn_id, idx, name, kind, state, output, fencing_token, completed_at)"
_STEP_CONFLICT = (
    "ON CONFLICT (turn_id, idx) DO UPDATE SET state = EXCLUDED.state, "
    "output = EXCLUDED.output, fencing_token = EXCLUDED.fencing_token, "
    "completed_at = EXCLUDED.completed_at"
)
# Renewing and journaling a step in one statement: the step is written only if the lease held.
_RENEW_AND_STEP_SQL = (
    _RENEW_CTE + ", w AS (INSERT INTO turn_steps " + _STEP_COLUMNS + " "
    "SELECT %s::uuid, %s::int, %s::text, %s::text, %s::text, %s::jsonb, %s::bigint, "
    "CASE WHEN %s::text = 'started' THEN NULL ELSE now() END "
    "WHERE EXISTS (SELECT 1 FROM r) " + _STEP_CONFLICT + ") "
    "SELECT count(*) FROM r"
)


def _renew_params(lease: Lease) -> tuple[Any, ...]:
    return (lease.session_uid, lease.seconds, lease.turn_id, lease.token)


def renew(tx: Tx, lease: Lease) -> None:
    """Check the fence and extend the lease; raise Fenced if this worker lost the turn.

    Locks the session row first, then the turn: the same order as the gateway and the claim,
    so concurrent writers queue instead of deadlocking.
    """
    if tx.scalar(_RENEW_CTE + " SELECT count(*) FROM r", _renew_params(lease)) == 0:
        raise Fenced(str(lease.turn_id))


def load(tx: Tx, turn_id: uuid.UUID) -> list[Step]:
    rows = tx.all(
        "SELECT idx, name, kind, state, output FROM turn_steps WHERE turn_id = %s ORDER BY idx",
        (turn_id,),
    )
    return [Step(r["idx"], r["name"], r["kind"], r["state"], r["output"]) for r in rows]


def record(
    tx: Tx,
    lease: Lease,
    done: Step | None,
    starting: Step | None = None,
    *,
    before: list[tuple[str, dict[str, Any]]] | None = None,
    defer_events: bool = False,
    renewing: bool = True,
) -> list[tuple[str, dict[str, Any]]]:
    """In the caller's transaction: journal the step that just finished and announce the next.
    With `defer_events` the events are returned for the caller to append with its own (one
    statement for the lot); otherwise they are appended here.

    A tool step is also journaled when it starts: if the worker dies during the call, the
    resumed turn must not run it again (its effect may have happened) but answer it with an
    error result instead.
    """
    batch: list[tuple[str, dict[str, Any]]] = list(before or [])
    if done is not None:
        if renewing:  # False only right after the lease was taken in this transaction
            params = _renew_params(lease) + _step_params(lease, done)
            if tx.scalar(_RENEW_AND_STEP_SQL, params) == 0:
                raise Fenced(str(lease.turn_id))
        else:
            _upsert(tx, lease, done)
        batch.append((f"step.{done.state}", _step_event(done, summary=True)))
    elif renewing:
        renew(tx, lease)
    if starting is not None:
        if starting.kind == "tool":
            _upsert(tx, lease, starting)
        batch.append(("step.started", _step_event(starting)))
    if batch and not defer_events:
        events.append(tx, lease.session_uid, batch, lease.turn_id)
        return []
    return batch


def _upsert(tx: Tx, lease: Lease, step: Step) -> None:
    tx.execute(
        f"INSERT INTO turn_steps {_STEP_COLUMNS} VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, "
        f"CASE WHEN %s = 'started' THEN NULL ELSE now() END) {_STEP_CONFLICT}",
        _step_params(lease, step),
    )


def _step_params(lease: Lease, step: Step) -> tuple[Any, ...]:
    return (
        lease.turn_id, step.idx, step.name, step.kind, step.state, jsonb(step.output),
        lease.token, step.state,
    )  # fmt: skip


ERROR_PREVIEW_CHARS = 500


def _step_event(step: Step, *, summary: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {"step": step.name, "index": step.idx, "kind": step.kind}
    if summary and step.kind == "model":
        data["provider"] = step.output.get("provider")
        data["toolCalls"] = [c["name"] for c in step.output.get("toolCalls", [])]
    if summary and step.kind == "tool":
        data["isError"] = bool(step.output.get("isError"))
        if data["isError"]:  # the stream says what went wrong, not just that it did
            data["error"] = str(step.output.get("result", ""))[:ERROR_PREVIEW_CHARS]
    if summary and step.kind == "knowledge":
        data["documents"] = step.output.get("documents", [])
    return data


class Heartbeat:
    """Renews the lease while a step runs (model calls can be slow); notices a lost lease."""

    def __init__(self, db: Database, lease: Lease) -> None:
        self._db = db
        self._lease = lease
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="talon-lease")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._lease.seconds / 3):
            try:
                with self._db.transaction() as tx:
                    renew(tx, self._lease)
            except Fenced:
                self.lost = True
                return
            except Exception as exc:  # the next step's own renew will decide
                log.warning("lease renewal failed: %s", exc)

    def check(self) -> None:
        if self.lost:
            raise Fenced(str(self._lease.turn_id))

    def stop(self) -> None:
        self._stop.set()
