"""Claiming a session's next turn for this worker: the lease, the fencing token, the attempt
count, and what the turn runs with (its agent, history and journal), read in the same
transaction; a turn's first step (loading knowledge) completes inside the claim too.

A turn that cannot run (its agent is gone or does not resolve, or it has used up its
attempts) is failed here and the next one is looked at.

A lease is live while it has not expired and its owner's process is alive: the owner holds
its liveness lock (`store/liveness.py`), so a crashed worker's turn is taken over at once
rather than after its lease runs out. The check costs nothing on a turn nobody else holds.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from talon.runtime import context as ctx
from talon.runtime.journal import KNOWLEDGE, MODEL, Lease, Step, load, record
from talon.runtime.tools.base import AgentContext
from talon.sessions import events, messages
from talon.store.database import Database, RollbackOnly, Tx, jsonb
from talon.store.liveness import owner_gone_sql
from talon.telemetry import metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claim:
    lease: Lease
    turn: dict[str, Any]
    agent: AgentContext
    journal: dict[int, Step]
    history: list[dict[str, Any]]
    started_ns: int = 0  # when the claim began (epoch ns): the attempt's span starts there
    knowledge_ns: tuple[int, int] | None = None  # when this claim loaded the knowledge


@dataclass(frozen=True)
class ClaimOptions:
    worker_id: str
    lease_seconds: float
    max_attempts: int  # deliveries of one turn before it is failed


@dataclass(frozen=True)
class Busy:
    """Another live worker holds the session's head turn: look again `until` (its lease's
    expiry) or as soon as `owner` dies."""

    until: datetime
    owner: str


# Claiming a session's head turn, in one statement: lock the session row, then its oldest
# open turn (the order every writer uses), and take that turn unless another worker's lease
# on it is live (unexpired, and its owner alive) or it has used up its attempts; with the
# agent's resource row. `id` is NULL when nothing was taken (`head_*` say why). The CASE
# asks about the owner only for an unexpired lease.
_CLAIM_SQL = f"""
WITH s AS (
    SELECT uid, namespace, id, agent FROM sessions WHERE uid = %s FOR UPDATE
), head AS (
    SELECT t.id, t.state, t.attempts, t.lease_expires_at, t.lease_owner,
           CASE WHEN t.state = 'running' AND t.lease_expires_at > now()
                THEN t.lease_owner IS NULL OR NOT {owner_gone_sql("t.lease_owner")}
                ELSE false END AS leased
    FROM turns t JOIN s ON t.session_uid = s.uid
    WHERE t.state IN ('queued', 'running') ORDER BY t.seq LIMIT 1 FOR UPDATE OF t
), claimed AS (
    UPDATE turns SET state = 'running', fencing_token = fencing_token + 1, lease_owner = %s,
           lease_expires_at = now() + make_interval(secs => %s), attempts = turns.attempts + 1,
           started_at = COALESCE(started_at, now())
    FROM head WHERE turns.id = head.id AND NOT head.leased AND head.attempts < %s
    RETURNING turns.id, turns.seq, turns.attempts, turns.fencing_token, turns.started_at,
              turns.created_at, turns.traceparent, turns.attempt_span
)
SELECT s.namespace, s.id AS session_id, s.agent,
       head.id AS head_id, head.attempts AS head_attempts, head.leased AS head_leased,
       head.lease_expires_at AS head_lease, head.lease_owner AS head_owner,
       claimed.id, claimed.seq, claimed.attempts, claimed.fencing_token, claimed.started_at,
       claimed.created_at, claimed.traceparent, claimed.attempt_span,
       r.name IS NOT NULL AS agent_found, r.labels AS agent_labels, r.status AS agent_status
FROM s LEFT JOIN head ON true LEFT JOIN claimed ON true
LEFT JOIN resources r ON r.kind = 'Agent' AND r.namespace = s.namespace AND r.name = s.agent
"""


class NotTaken:
    """`first` said no: the delivery that named the session is another consumer's."""


def claim(
    db: Database,
    session_uid: uuid.UUID,
    options: ClaimOptions,
    first: Callable[[Tx], Callable[[], bool]] | None = None,
) -> Claim | Busy | NotTaken | None:
    """The session's head turn, claimed; or, when another live worker's lease on it holds,
    that worker and when its lease expires; or None when the session has no open turn.
    `first(tx)` (the broker claiming the delivery that named the session) queues its
    statement first in the same transaction, to travel with the turn's claim, and returns
    what says whether it took the delivery; if not, the turn's claim is undone and NotTaken
    returned."""
    while True:
        with db.transaction() as tx:
            taken = first(tx) if first is not None else None
            first = None
            claimed = _claim_in(tx, session_uid, options, time.time_ns(), taken)
            if isinstance(claimed, NotTaken):
                raise RollbackOnly  # the delivery is another consumer's: undo the claim
        if not isinstance(claimed, _Settled):
            return claimed


class _Settled:
    """The head turn could not run and was failed in the claim's transaction: look again."""


def _claim_in(
    tx: Tx,
    session_uid: uuid.UUID,
    options: ClaimOptions,
    started_ns: int,
    taken: Callable[[], bool] | None = None,
) -> Claim | Busy | _Settled | NotTaken | None:
    while True:
        # The window and the knowledge of the turn this claim leases go in the same round
        # trip: they are read after the claim ran, by the lease (thrown away when nothing was
        # claimed, or when a resumed turn has its knowledge step already).
        claimed_rows, window, knowledge_rows = tx.pipeline([
            (_CLAIM_SQL,
             (session_uid, options.worker_id, options.lease_seconds, options.max_attempts)),
            ctx.leased_history(session_uid, options.worker_id),
            ctx.leased_knowledge(session_uid, options.worker_id),
        ])  # fmt: skip
        row = claimed_rows[0] if claimed_rows else None
        if taken is not None and not taken():
            return NotTaken()  # the delivery's claim, sent with this statement, found it taken
        taken = None
        if row is None or row["head_id"] is None:
            return None  # no such session, or nothing open
        if row["id"] is not None:
            break
        if row["head_leased"]:
            return Busy(row["head_lease"], row["head_owner"] or "")  # another worker runs it
        finish_failed(
            tx, session_uid, row["head_id"], "too_many_attempts",
            f"gave up after {row['head_attempts']} attempts",
        )  # fmt: skip
        _count_failed(row["namespace"], row["agent"])
    session = {"namespace": row["namespace"], "id": row["session_id"], "agent": row["agent"]}
    turn = row
    lease = Lease(turn["id"], session_uid, int(turn["fencing_token"]), options.lease_seconds)
    started = [("turn.started", {"attempt": turn["attempts"],
                                 "resumed": turn["attempts"] > 1})]  # fmt: skip
    # Steps are only written under a claim: a turn claimed for the first time has none.
    journal = {} if turn["attempts"] == 1 else {s.idx: s for s in load(tx, turn["id"])}
    try:
        found = {"labels": row["agent_labels"], "status": row["agent_status"]}
        agent = ctx.agent_from_row(session, found if row["agent_found"] else None)
    except ctx.TurnFailure as failure:
        events.append(tx, session_uid, started, turn["id"])
        finish_failed(tx, session_uid, turn["id"], failure.code, failure.message)
        _count_failed(row["namespace"], row["agent"])
        return _Settled()
    history = ctx.chat_history(messages.window_rows(window[0]["messages"]))
    knowledge_ns = None
    if 0 not in journal:
        # Loading knowledge is a quick read: it completes inside the claim, one commit.
        loading = time.time_ns()
        knowledge = ctx.knowledge_from(tx, agent.namespace, ctx.turn_input(history), knowledge_rows)
        knowledge_ns = (loading, time.time_ns())
        journal[0] = Step(0, KNOWLEDGE, "knowledge", "completed", knowledge)
        announce = ("step.started", {"step": KNOWLEDGE, "index": 0, "kind": "knowledge"})
        next_step = Step(1, MODEL, "model", "started", {})
        # The lease was taken a moment ago in this transaction: no renewal needed.
        record(tx, lease, journal[0], next_step, before=[*started, announce], renewing=False)
    else:
        events.append(tx, session_uid, started, turn["id"])
    return Claim(lease, turn, agent, journal, history, started_ns, knowledge_ns)


def _count_failed(namespace: str, agent: str) -> None:
    """A turn failed before it could run (counted as its transaction commits, give or take a
    rollback: a metric, not a record)."""
    metrics.turns_ended.add(1, metrics.where(namespace=namespace, agent=agent, outcome="failed"))


def note_attempt_span(db: Database, lease: Lease, traceparent: str | None) -> None:
    """Remember the running attempt's span on its turn, for the next attempt to link to (only
    while traces are exported: it costs a commit)."""
    with db.transaction() as tx:
        tx.execute(
            "UPDATE turns SET attempt_span = %s WHERE id = %s AND fencing_token = %s",
            (traceparent, lease.turn_id, lease.token),
        )


def finish_failed(
    tx: Tx, session_uid: uuid.UUID, turn_id: uuid.UUID, code: str, message: str, **extra: Any
) -> None:
    """Fail the turn with `code` and say so on its stream (with the session's open turns at
    commit). The caller holds the session row's lock and, if it ran the turn, renewed."""
    error = {"code": code, "message": message, **extra}
    tx.execute(
        "UPDATE turns SET state = 'failed', finished_at = now(), error = %s::jsonb, "
        "lease_owner = NULL, lease_expires_at = NULL WHERE id = %s",
        (jsonb(error), turn_id),
    )
    remaining = events.open_turns(tx, session_uid)
    failed = {"code": code, "message": message, "openTurns": remaining}
    events.append(tx, session_uid, [("turn.failed", failed)], turn_id)
    log.warning("turn %s failed: %s: %s", turn_id, code, message)
