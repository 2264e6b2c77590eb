"""Claiming a session's next turn for this worker: the lease, the fencing token, the attempt
count, and what the turn runs with (its agent, history and journal). A turn's first step
(loading knowledge) completes with the claim: in the usual case (a first attempt, an agent
that resolves, a namespace without knowledge) in the claiming statement, its round trip
and its COMMIT; otherwise in a second transaction that renews the lease first.

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
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from talon.broker.base import Condition, DeliveryClaim
from talon.knowledge.index import nothing_retrieved
from talon.runtime import context as ctx
from talon.runtime import turn_start
from talon.runtime.history_cache import HistoryCache
from talon.runtime.journal import (
    KNOWLEDGE,
    Fenced,
    Lease,
    Step,
    load,
    record,
)
from talon.runtime.journal import renew as journal_renew
from talon.runtime.knowledge_hints import WithoutKnowledge
from talon.runtime.tools.base import AgentContext
from talon.sessions import events, messages
from talon.store.database import Database, Tx, jsonb
from talon.store.liveness import owner_gone_sql
from talon.store.statements import Params
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
    # The worker's copies of the windows it sent last (None: read each window whole).
    history: HistoryCache | None = field(default=None, compare=False)
    # Sessions whose turns start without knowledge, as last seen (None: always read it).
    without_knowledge: WithoutKnowledge | None = field(default=None, compare=False)


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
# asks about the owner only for an unexpired lease. `{took}`: whether the delivery naming
# the session was taken (`DeliveryClaim.took`); if not, no row and no lock at all, so the
# transaction writes nothing and its COMMIT flushes nothing. `{start}`: the CTEs that start
# the usual turn in the same statement (`turn_start.start_ctes`), and `{started}` whether
# they did.
_CLAIM_SQL = f"""
WITH s AS (
    SELECT uid, namespace, id, agent FROM sessions WHERE uid = %s AND {{took}} FOR UPDATE
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
), r AS (
    SELECT a.* FROM s CROSS JOIN LATERAL ({turn_start.AGENT_ROW_SQL.format(session="s")}) a
){{start}}
SELECT s.namespace, s.id AS session_id, s.agent,
       head.id AS head_id, head.attempts AS head_attempts, head.leased AS head_leased,
       head.lease_expires_at AS head_lease, head.lease_owner AS head_owner,
       claimed.id, claimed.seq, claimed.attempts, claimed.fencing_token, claimed.started_at,
       claimed.created_at, claimed.traceparent, claimed.attempt_span,
       r.name IS NOT NULL AS agent_found, r.labels AS agent_labels, r.status AS agent_status,
       {{started}} AS started
FROM s LEFT JOIN head ON true LEFT JOIN claimed ON true LEFT JOIN r ON true
"""
_START_CTES, _START_PARAMS = turn_start.start_ctes()


_NO_DELIVERY = Condition("TRUE", ())  # a claim with no delivery to depend on


class NotTaken:
    """`first` said no: the delivery that named the session is another consumer's."""


class _Settled:
    """The head turn could not run and was failed: look again."""


@dataclass(frozen=True)
class _Exhausted:
    """The head turn has used up its attempts (it is not leased): fail it, look again."""

    row: dict[str, Any]


@dataclass(frozen=True)
class _Leased:
    """A turn this worker has just leased, with what the claim read for it (the window as
    what the history copy asked after `after` lacks); `started`: its statement started it."""

    row: dict[str, Any]
    window: list[dict[str, Any]]
    after: int
    knowledge_rows: list[dict[str, Any]] | None  # None: not read (`WithoutKnowledge`)
    started: bool


def claim(
    db: Database,
    session_uid: uuid.UUID,
    options: ClaimOptions,
    first: Callable[[Tx], DeliveryClaim] | None = None,
) -> Claim | Busy | NotTaken | None:
    """The session's head turn, claimed; or, when another live worker's lease on it holds,
    that worker and when its lease expires; or None when the session has no open turn.
    `first(tx)` (the broker claiming the delivery that named the session) queues its
    statement first in the same transaction, to travel with the turn's claim, which takes
    the turn only if it took the delivery; if it did not, NotTaken.

    The usual turn is claimed and started in one round trip, with its COMMIT; the others
    (resumed, with knowledge, or failing) are started in a second transaction, which first
    checks that the lease still holds."""
    started_ns = time.time_ns()
    with db.transaction() as tx:
        taking = first(tx) if first is not None else None
        taken = _take(tx, session_uid, options, taking, start=True)
    if isinstance(taken, _Leased):
        lease = _lease_of(taken.row, session_uid, options)
        if taken.started:
            try:
                return _started(db, taken, options, lease, started_ns)
            except BaseException:  # its history could not be read again
                _let_go(db, lease)
                raise
        try:
            with db.transaction() as tx:
                begun = _begin(tx, taken, options, lease, started_ns, renew=True)
        except Fenced:  # cancelled (or taken over) since the claim committed
            begun = _Settled()
        except BaseException:
            _let_go(db, lease)
            raise
        if not isinstance(begun, _Settled):
            return begun
    elif not isinstance(taken, _Exhausted):
        return taken
    # Head turns that cannot run are failed one by one, each with the next claim.
    while True:
        with db.transaction() as tx:
            claimed = _claim_in(tx, session_uid, options, time.time_ns())
        if not isinstance(claimed, _Settled):
            return claimed


# A lease given up at once, if this worker still holds it: the turn is anyone's to claim
# again (as its next attempt: whatever the failed transaction did may have committed).
_LET_GO_SQL = (
    "WITH s AS (SELECT uid FROM sessions WHERE uid = %s FOR UPDATE) "
    "UPDATE turns SET lease_expires_at = now() FROM s WHERE turns.session_uid = s.uid "
    "AND turns.id = %s AND fencing_token = %s AND state = 'running'"
)


def _let_go(db: Database, lease: Lease) -> None:
    """Give up a turn that could not be started (an error in `_begin`'s transaction, after
    the claim had committed), so that the retried delivery, or another worker, claims it at
    once instead of finding it leased by a live worker until the lease runs out."""
    try:
        with db.transaction() as tx:
            tx.execute(_LET_GO_SQL, (lease.session_uid, lease.turn_id, lease.token))
    except Exception as exc:  # its lease runs out on its own
        log.warning("could not give up turn %s after a failed start: %s", lease.turn_id, exc)


def _lease_of(row: dict[str, Any], session_uid: uuid.UUID, options: ClaimOptions) -> Lease:
    return Lease(row["id"], session_uid, int(row["fencing_token"]), options.lease_seconds)


def _claim_in(
    tx: Tx, session_uid: uuid.UUID, options: ClaimOptions, started_ns: int
) -> Claim | Busy | _Settled | None:
    while True:
        taken = _take(tx, session_uid, options, None, start=False)
        if not isinstance(taken, _Exhausted):
            break
        row = taken.row
        finish_failed(
            tx, session_uid, row["head_id"], "too_many_attempts",
            f"gave up after {row['head_attempts']} attempts",
        )  # fmt: skip
        _count_failed(row["namespace"], row["agent"])
    if isinstance(taken, _Leased):
        lease = _lease_of(taken.row, session_uid, options)
        return _begin(tx, taken, options, lease, started_ns, renew=False)
    assert not isinstance(taken, NotTaken)  # there was no delivery to take
    return taken


def _take(
    tx: Tx,
    session_uid: uuid.UUID,
    options: ClaimOptions,
    taking: DeliveryClaim | None,
    *,
    start: bool,
) -> _Leased | _Exhausted | Busy | NotTaken | None:
    """Claim the head turn; with `start`, start it too if it is the usual case, and commit.
    The window and the knowledge of the turn this claim leases go in the same round trip:
    they are read after the claim ran, by the lease (thrown away when nothing was claimed,
    or when a resumed turn has its knowledge step already); the knowledge not at all when
    the session's turns were last seen to start without (`knowledge_hints`)."""
    took = taking.took if taking is not None else _NO_DELIVERY
    after = options.history.after(session_uid) if options.history is not None else 0
    hints = options.without_knowledge if start else None
    guess = hints is not None and hints.likely(session_uid)  # the start will need none
    start_sql, started_sql = (f", {_START_CTES}", turn_start.STARTED_SQL) if start else ("", "0")
    claiming = _CLAIM_SQL.format(took=took.sql, start=start_sql, started=started_sql)
    batch: list[tuple[str, Params]] = [
        (claiming,
         (session_uid, *took.params, options.worker_id, options.lease_seconds,
          options.max_attempts, *(_START_PARAMS if start else ()))),
        ctx.leased_history(session_uid, options.worker_id, after),
    ]  # fmt: skip
    if not guess:
        batch.append(ctx.leased_knowledge(session_uid, options.worker_id))
    results = tx.pipeline(batch, commit=start)
    if taking is not None and not taking.taken():
        return NotTaken()  # another consumer's: the turn's claim depended on it, took nothing
    row = results[0][0] if results[0] else None
    if row is None or row["head_id"] is None:
        return None  # no such session, or nothing open
    if row["id"] is None:
        if row["head_leased"]:
            return Busy(row["head_lease"], row["head_owner"] or "")  # another worker runs it
        return _Exhausted(row)
    started = bool(row["started"])
    if hints is not None:
        hints.note(session_uid, started_without=started)
    return _Leased(row, results[1], after, None if guess else results[2], started)


def _started(
    db: Database, leased: _Leased, options: ClaimOptions, lease: Lease, started_ns: int
) -> Claim:
    """The claim of a turn its claiming statement started (knowledge step and all)."""
    row = leased.row
    agent = ctx.claimed_agent(row)  # the statement found it resolved: it cannot raise

    def read(sql: str, params: Params) -> dict[str, Any] | None:
        with db.transaction() as tx:
            return tx.one(sql, params)

    history = _history(leased, lease.session_uid, options, read)
    journal = {0: Step(0, KNOWLEDGE, "knowledge", "completed", nothing_retrieved())}
    # No time of its own: it was a condition of the claim's round trip.
    loaded = time.time_ns()
    return Claim(lease, row, agent, journal, history, started_ns, (loaded, loaded))


def _history(
    leased: _Leased,
    session_uid: uuid.UUID,
    options: ClaimOptions,
    read: Callable[[str, Params], dict[str, Any] | None],
) -> list[dict[str, Any]]:
    """The leased turn's history for the model, from the claim's read and the worker's copy
    of the session's window; read again whole (`read(sql, params)`: its row) should the
    copy have changed since the claim asked after it."""
    copies = options.history or HistoryCache(max_bytes=0)  # none: nothing is kept
    rows = copies.window(session_uid, messages.window_since(leased.window[0]), leased.after)
    if rows is None:  # by the claimed turn's id: the claim has committed, the lease may be gone
        row = read(*ctx.turn_history(session_uid, leased.row["id"]))
        rows = copies.window(session_uid, messages.window_since(row or {"head": None}), 0)
    return ctx.chat_history(rows or [])


def _begin(
    tx: Tx,
    leased: _Leased,
    options: ClaimOptions,
    lease: Lease,
    started_ns: int,
    *,
    renew: bool,
) -> Claim | _Settled:
    """Start a leased turn that its claim did not: journal its knowledge step (unless a
    resumed turn has it already), or fail it if its agent does not resolve. `renew`: the
    claim committed apart, so check first that the lease still holds (Fenced if not)."""
    row, session_uid = leased.row, lease.session_uid
    if renew:
        journal_renew(tx, lease)
    attempt = int(row["attempts"])
    # Steps are only written under a claim: a turn claimed for the first time has none.
    journal = {} if attempt == 1 else {s.idx: s for s in load(tx, row["id"])}
    try:
        agent = ctx.claimed_agent(row, tx)
    except ctx.TurnFailure as failure:
        events.append(tx, session_uid, [turn_start.turn_started(attempt)], row["id"])
        finish_failed(tx, session_uid, row["id"], failure.code, failure.message)
        _count_failed(row["namespace"], row["agent"])
        return _Settled()
    history = _history(leased, session_uid, options, tx.one)
    knowledge_ns = None
    if 0 not in journal:
        # Loading knowledge is a quick read: it completes inside the claim, one commit.
        loading = time.time_ns()
        knowledge = ctx.knowledge_from(
            tx, agent.namespace, ctx.turn_input(history), leased.knowledge_rows
        )
        knowledge_ns = (loading, time.time_ns())
        before, journal[0], starting = turn_start.start_steps(attempt, knowledge)
        # The lease was taken or renewed a moment ago in this transaction.
        record(tx, lease, journal[0], starting, before=before, renewing=False)
    else:
        events.append(tx, session_uid, [turn_start.turn_started(attempt)], row["id"])
    return Claim(lease, row, agent, journal, history, started_ns, knowledge_ns)


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
