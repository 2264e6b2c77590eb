"""The `model_usage` table: the tokens each journaled model step spent, and their sums.

A row is written by the statement that journals its model step (`store/turn_steps.py`
splices `RECORD_CTE` into it), so a step and its usage commit together, in the same round
trip, and a worker that lost its lease writes neither. The table has no foreign keys: what a
session cost outlives the session. Rows go with their namespace (`forget_namespace`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from talon.store.database import Tx


@dataclass(frozen=True)
class ModelUsage:
    """What one model step spent, and who answered it."""

    profile: str
    provider: str
    model: str
    prompt_tokens: int
    completion_tokens: int


# A CTE continuing a statement of turn_steps' that journals a model step: `{gate}` has a
# row only if the lease held. The session row it reads is locked by then (and the turn's
# cannot change meanwhile: every writer of a turn locks its session first).
RECORD_CTE = (
    "u AS (INSERT INTO model_usage (turn_id, idx, namespace, agent, session_id, session_uid, "
    "turn_seq, profile, provider, model, prompt_tokens, completion_tokens) "
    "SELECT t.id, %s::int, s.namespace, s.agent, s.id, s.uid, t.seq, %s::text, %s::text, "
    "%s::text, %s::bigint, %s::bigint FROM turns t JOIN sessions s ON s.uid = t.session_uid "
    "WHERE t.id = %s::uuid AND EXISTS (SELECT 1 FROM {gate}) "
    "ON CONFLICT (turn_id, idx) DO NOTHING)"
)


def record_params(turn_id: uuid.UUID, idx: int, usage: ModelUsage) -> tuple[Any, ...]:
    """The parameters of `RECORD_CTE`, in order."""
    return (
        idx, usage.profile, usage.provider, usage.model,
        usage.prompt_tokens, usage.completion_tokens, turn_id,
    )  # fmt: skip


@dataclass(frozen=True)
class Scope:
    """Whose usage: a namespace, optionally one agent's, one session's or one turn's."""

    namespace: str
    agent: str | None = None
    session_uid: uuid.UUID | None = None
    turn_id: uuid.UUID | None = None


# What usage can be grouped by: the SQL expression of the group's key and its type (keys page
# in their own order: turn 9 before turn 10).
GROUPS: dict[str, tuple[str, str]] = {
    "agent": ("agent", "text"),
    "session": ("session_id", "text"),
    "turn": ("turn_seq", "bigint"),
    "profile": ("profile", "text"),
    "provider": ("provider", "text"),
    "model": ("model", "text"),
    "day": ("to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')", "text"),
}
_SUMS = (
    "count(*) AS calls, coalesce(sum(prompt_tokens), 0) AS prompt, "
    "coalesce(sum(completion_tokens), 0) AS completion"
)


@dataclass(frozen=True)
class Window:
    """Recorded in [since, until); an open end where None."""

    since: datetime | None = None
    until: datetime | None = None


def _where(scope: Scope, window: Window) -> tuple[str, list[Any]]:
    clauses = ["namespace = %s"]
    params: list[Any] = [scope.namespace]
    for column, value in (
        ("recorded_at >=", window.since),
        ("recorded_at <", window.until),
        ("agent =", scope.agent),
        ("session_uid =", scope.session_uid),
        ("turn_id =", scope.turn_id),
    ):
        if value is not None:
            clauses.append(f"{column} %s")
            params.append(value)
    return " AND ".join(clauses), params


def total(tx: Tx, scope: Scope, window: Window) -> dict[str, int]:
    """Calls and tokens in `scope` recorded in `window`."""
    where, params = _where(scope, window)
    row = tx.one(f"SELECT {_SUMS} FROM model_usage WHERE {where}", params)
    assert row is not None  # an aggregate without GROUP BY always has its row
    return _sums(row)


def groups(
    tx: Tx,
    scope: Scope,
    window: Window,
    *,
    by: str,
    after: str | None,
    limit: int,
) -> tuple[list[tuple[Any, dict[str, int]]], Any | None]:
    """Sums per `by` key (one of GROUPS), in key order from after `after`; at most `limit`
    groups and the key to continue after, or None when there are no more."""
    expression, sql_type = GROUPS[by]
    where, params = _where(scope, window)
    if after is not None:  # the key is a function of the row: filter rows, not groups
        where += f" AND {expression} > %s::{sql_type}"
        params.append(after)
    rows = tx.all(
        f"SELECT {expression} AS key, {_SUMS} FROM model_usage WHERE {where} "
        f"GROUP BY 1 ORDER BY 1 LIMIT %s",
        [*params, limit + 1],
    )
    found = [(r["key"], _sums(r)) for r in rows[:limit]]
    return found, (found[-1][0] if len(rows) > limit else None)


def forget_namespace(tx: Tx, namespace: str) -> None:
    tx.execute("DELETE FROM model_usage WHERE namespace = %s", (namespace,))


def _sums(row: dict[str, Any]) -> dict[str, int]:
    prompt, completion = int(row["prompt"]), int(row["completion"])
    return {
        "modelCalls": int(row["calls"]),
        "promptTokens": prompt,
        "completionTokens": completion,
        "totalTokens": prompt + completion,
    }
