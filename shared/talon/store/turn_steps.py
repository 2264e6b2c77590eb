"""The step journal's table, `turn_steps`: every statement that reads or writes it.

`runtime/journal.py` is the journal: it decides what is written when, under the turn's
lease and fencing token, and it is the only writer. Its statements live here, below both the
runtime and the sessions layer, because the session views (`sessions/views.py`: a turn with
its steps, the latest turn's progress, the step outputs talon-ops shows) read the same table,
and the sessions layer sits below the runtime (the runtime appends session events), so it
may not import `runtime/`. No other module names `turn_steps`.

Every write is guarded by the lease. The renewal (lock the session row, extend the turn's
lease if the fencing token still holds) travels with the step in one statement; the turn's
answer, its last step and its completion are one statement after the session's lock, in one
round trip: the round trips are most of what a turn costs (see Benchmarks in the README).
Either way a step is written by a transaction holding its session's lock, after checking
that its turn is still this lease's: every writer of a turn (and the session's deletion,
which takes its turns and their steps) locks the session first, which is what lets
`turn_steps` do without a foreign key to `turns` (migration 0018).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from talon.store import model_usage
from talon.store.database import Tx, jsonb
from talon.store.model_usage import ModelUsage


@dataclass(frozen=True)
class Step:
    """One row of the journal: step `idx` of a turn, `started` or finished with its output."""

    idx: int
    name: str
    kind: str  # knowledge | model | tool | write
    state: str  # started | completed | failed
    output: dict[str, Any]


class Guard(Protocol):
    """What guards a write: the worker's lease on the turn (runtime/journal.Lease)."""

    @property
    def turn_id(self) -> uuid.UUID: ...
    @property
    def session_uid(self) -> uuid.UUID: ...
    @property
    def token(self) -> int: ...
    @property
    def seconds(self) -> float: ...


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
_COLUMNS = "(turn_id, idx, name, kind, state, output, fencing_token, completed_at)"
_CONFLICT = (
    "ON CONFLICT (turn_id, idx) DO UPDATE SET state = EXCLUDED.state, "
    "output = EXCLUDED.output, fencing_token = EXCLUDED.fencing_token, "
    "completed_at = EXCLUDED.completed_at"
)
# A step written only if the CTE `{gate}` has a row (the lease held), as a CTE `{name}`.
_GATED_WRITE_CTE = (
    "{name} AS (INSERT INTO turn_steps " + _COLUMNS + " "
    "SELECT %s::uuid, %s::int, %s::text, %s::text, %s::text, %s::jsonb, %s::bigint, "
    "CASE WHEN %s::text = 'started' THEN NULL ELSE now() END "
    "WHERE EXISTS (SELECT 1 FROM {gate}) " + _CONFLICT + ")"
)
# Renewing and journaling a step in one statement: the step is written only if the lease held.
_WRITE_CTE = _GATED_WRITE_CTE.format(name="w", gate="r")
_RENEW_AND_WRITE_SQL = _RENEW_CTE + ", " + _WRITE_CTE + " SELECT count(*) FROM r"
# A model step with the tokens it spent (model_usage), still one statement.
_RENEW_AND_WRITE_MODEL_SQL = (
    _RENEW_CTE + ", " + _WRITE_CTE + ", " + model_usage.RECORD_CTE.format(gate="r")
    + " SELECT count(*) FROM r"
)  # fmt: skip
_WRITE_SQL = (
    f"INSERT INTO turn_steps {_COLUMNS} VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, "
    f"CASE WHEN %s = 'started' THEN NULL ELSE now() END) {_CONFLICT}"
)
# A tool call about to run: its step says so (`ran`) before any side effect can happen. An
# earlier `started` row (written when the step was announced) keeps its start time.
_BEGIN_CALL_SQL = (
    "INSERT INTO turn_steps (turn_id, idx, name, kind, state, output, fencing_token) "
    "VALUES (%s, %s, %s, 'tool', 'started', %s::jsonb, %s) "
    "ON CONFLICT (turn_id, idx) DO UPDATE SET output = EXCLUDED.output, "
    "fencing_token = EXCLUDED.fencing_token"
)
# The session's lock, taken by a statement of its own before the completion (below), so that
# the completion, reading the tables as of its own start, sees every change committed to the
# session before it: whether this worker's fencing token still holds, and the open turns.
_LOCK_SESSION_SQL = "SELECT 1 FROM sessions WHERE uid = %s FOR UPDATE"
# The turn's answer (the model step that gave it, with its usage: `{answer}`), its last step,
# its completion and the count of the session's other open turns (the session row is locked,
# so it is the count at commit; the splice's CTEs may read it as `open`), after the CTEs of a
# splice (`{ctes}`) and with what it returns (`{returns}`). `held` is the completion itself
# (a row only if this worker's fencing token held), and every other write is guarded by it: a
# worker that lost its lease writes nothing, its COMMIT commits nothing, and `held` says so.
_COMPLETE_SQL = (
    "WITH held AS (UPDATE turns SET state = 'completed', finished_at = now(), provider = %s, "
    "  lease_owner = NULL, lease_expires_at = NULL "
    "  WHERE id = %s AND fencing_token = %s AND state = 'running' RETURNING 1), "
    "open AS (SELECT count(*) AS n FROM turns WHERE session_uid = %s AND id <> %s "
    "  AND state IN ('queued', 'running')), "
    "{answer}{ctes}step AS (INSERT INTO turn_steps (turn_id, idx, name, kind, state, output, "
    "  fencing_token, completed_at) "
    "  SELECT %s, %s, %s, 'write', 'completed', %s::jsonb, %s, now() "
    "  WHERE EXISTS (SELECT 1 FROM held)) "
    "SELECT n AS open, (SELECT count(*) FROM held) AS held, {returns} AS spliced FROM open"
)
# The answer's model step and its usage, as CTEs of the completion.
_ANSWER_CTES = (
    _GATED_WRITE_CTE.format(name="answer", gate="held") + ", "
    + model_usage.RECORD_CTE.format(gate="held") + ", "
)  # fmt: skip
# A delivery of the session may be acknowledged with the completion (`Delivery.ack_in`) on
# this condition, evaluated before it: the turn is still this lease's, and no other turn of
# the session is open (none can be queued meanwhile: `lock_session` locked the session row).
IDLE_AFTER_COMPLETION_SQL = (
    "EXISTS (SELECT 1 FROM turns WHERE id = %s AND fencing_token = %s AND state = 'running') "
    "AND NOT EXISTS (SELECT 1 FROM turns WHERE session_uid = %s AND id <> %s "
    "AND state IN ('queued', 'running'))"
)


@dataclass(frozen=True)
class Splice:
    """Other tables' writes that commit in the statement completing a turn, so they cost
    no round trip of their own (the turn's messages and events: `sessions/messages.
    completing`): its CTEs (`name AS (...)`, comma-separated, without WITH; they may read the
    CTE `open`, and must write only while the CTE `held` has a row, as the completion's own
    writes do), their parameters, and a scalar SQL expression the statement returns."""

    ctes: str
    params: tuple[Any, ...]
    returns: str


def _guard_params(guard: Guard) -> tuple[Any, ...]:
    return (guard.session_uid, guard.seconds, guard.turn_id, guard.token)


def _step_params(guard: Guard, step: Step) -> tuple[Any, ...]:
    return (
        guard.turn_id, step.idx, step.name, step.kind, step.state, jsonb(step.output),
        guard.token, step.state,
    )  # fmt: skip


def renew(tx: Tx, guard: Guard) -> bool:
    """Extend the lease; False when this worker no longer holds the turn."""
    return bool(tx.scalar(_RENEW_CTE + " SELECT count(*) FROM r", _guard_params(guard)))


def renew_and_write(tx: Tx, guard: Guard, step: Step, usage: ModelUsage | None = None) -> bool:
    """Extend the lease and write `step` (and the model `usage` it records), in one
    statement; False (nothing written) when this worker no longer holds the turn."""
    return bool(tx.scalar(*_renew_and_write(guard, step, usage)))


def _renew_and_write(
    guard: Guard, step: Step, usage: ModelUsage | None
) -> tuple[str, tuple[Any, ...]]:
    params = _guard_params(guard) + _step_params(guard, step)
    if usage is None:
        return _RENEW_AND_WRITE_SQL, params
    params += model_usage.record_params(guard.turn_id, step.idx, usage)
    return _RENEW_AND_WRITE_MODEL_SQL, params


def write(tx: Tx, guard: Guard, step: Step) -> None:
    """Write `step` (insert, or overwrite the row of the same index) without a renewal: for a
    caller that renewed, or took the lease, earlier in this transaction. Deferred: it
    travels with the transaction's next statement or its COMMIT."""
    tx.defer(_WRITE_SQL, _step_params(guard, step))


def gated_write_cte(gate: str, step: Step) -> tuple[str, tuple[Any, ...]]:
    """A CTE writing `step` for the turn the CTE `{gate}` returns (its `turn_id` and
    `fencing_token`), or nothing if it returns none: for a statement whose other CTEs decide
    whether the lease was taken (a turn's start, sent with its claim). `name AS (...)`,
    without WITH."""
    sql = (
        f"gated_step AS (INSERT INTO turn_steps {_COLUMNS} "
        "SELECT g.turn_id, %s::int, %s::text, %s::text, %s::text, %s::jsonb, g.fencing_token, "
        f"CASE WHEN %s::text = 'started' THEN NULL ELSE now() END FROM {gate} g {_CONFLICT})"
    )
    return sql, (step.idx, step.name, step.kind, step.state, jsonb(step.output), step.state)


def begin_call(tx: Tx, guard: Guard, idx: int, name: str, output: dict[str, Any]) -> None:
    """Mark tool step `idx` as running its call; the caller renewed in this transaction
    (deferred: it travels with the COMMIT, which the call waits for)."""
    tx.defer(_BEGIN_CALL_SQL, (guard.turn_id, idx, name, jsonb(output), guard.token))


def lock_session(tx: Tx, guard: Guard) -> None:
    """Lock the turn's session row (deferred: it travels with the transaction's next
    statement), so that the statements after it see whatever was committed to the session
    before: `complete_turn`'s checks need it."""
    tx.defer(_LOCK_SESSION_SQL, (guard.session_uid,))


@dataclass(frozen=True)
class Completed:
    held: bool  # False: this worker had lost the turn, and nothing was written
    open: int  # the session's other open turns
    spliced: Any  # what the splice returned


def complete_turn(
    tx: Tx,
    guard: Guard,
    step: Step,
    provider: str | None,
    splice: Splice | None = None,
    answer: tuple[Step, ModelUsage] | None = None,
) -> Completed:
    """Write the turn's `answer` (the model step that gave it, unless journaled already, and
    the tokens it spent), its last step `step`, and complete the turn (with `splice`), in one
    statement that commits the transaction (`Tx.commit_with`: with what was deferred before
    it, one round trip). The caller locked the session row earlier in this transaction
    (`lock_session`)."""
    answer_sql, answer_params = "", ()
    if answer is not None:
        answered, usage = answer
        answer_sql = _ANSWER_CTES
        answer_params = _step_params(guard, answered) + model_usage.record_params(
            guard.turn_id, answered.idx, usage
        )
    params = (
        provider, guard.turn_id, guard.token, guard.session_uid, guard.turn_id,
        *answer_params,
        *(splice.params if splice else ()),
        guard.turn_id, step.idx, step.name, jsonb(step.output), guard.token,
    )  # fmt: skip
    sql = _COMPLETE_SQL.format(
        answer=answer_sql,
        ctes=splice.ctes + ", " if splice else "",
        returns=splice.returns if splice else "NULL",
    )
    row = tx.commit_with(sql, params)[0]  # an aggregate: always one row
    return Completed(bool(row["held"]), int(row["open"]), row["spliced"])


def idle_after_completion(guard: Guard) -> tuple[str, tuple[Any, ...]]:
    """`IDLE_AFTER_COMPLETION_SQL` and its parameters for this lease."""
    return IDLE_AFTER_COMPLETION_SQL, (guard.turn_id, guard.token, guard.session_uid, guard.turn_id)


def load(tx: Tx, turn_id: uuid.UUID) -> list[Step]:
    """The turn's journal, in order: where a resumed turn picks up."""
    rows = tx.all(
        "SELECT idx, name, kind, state, output FROM turn_steps WHERE turn_id = %s ORDER BY idx",
        (turn_id,),
    )
    return [Step(r["idx"], r["name"], r["kind"], r["state"], r["output"]) for r in rows]


@dataclass(frozen=True)
class StepRecord:
    """A step as the API shows it: its row without the fencing token."""

    idx: int
    name: str
    kind: str
    state: str
    started_at: datetime
    completed_at: datetime | None
    output: dict[str, Any] | None  # only when asked for: outputs can be large


def read(
    tx: Tx, turn_id: uuid.UUID, *, outputs: bool | Literal["tool"] = False
) -> list[StepRecord]:
    """The turn's steps in order, with their outputs if `outputs` (`"tool"`: only tool steps'
    outputs, a call and its result, not the model's answers)."""
    column = {True: ", output", "tool": ", CASE WHEN kind = 'tool' THEN output END AS output"}
    rows = tx.all(
        "SELECT idx, name, kind, state, started_at, completed_at"
        + column.get(outputs, "")
        + " FROM turn_steps WHERE turn_id = %s ORDER BY idx",
        (turn_id,),
    )
    return [
        StepRecord(
            idx=r["idx"],
            name=r["name"],
            kind=r["kind"],
            state=r["state"],
            started_at=r["started_at"],
            completed_at=r["completed_at"],
            output=r.get("output"),
        )
        for r in rows
    ]
