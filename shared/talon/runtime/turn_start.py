"""A turn's start: the events and the knowledge step that open it, and the CTEs that write
them in its claiming statement when the database finds the turn is the usual one
(`runtime/claim.py`)."""

from __future__ import annotations

from typing import Any

from talon.knowledge.index import WITHOUT_KNOWLEDGE_SQL, nothing_retrieved
from talon.runtime.journal import KNOWLEDGE, MODEL, RECORDED_SQL, Step, record_when

# The agent row of the session `{session}` (an alias), by its whole key in any plan: as a
# plain join, a generic plan made on a young database (a handful of agents, equal costs)
# looked it up by `kind` alone and filtered every tenant's agents. The LIMIT keeps PostgreSQL
# from flattening it into that join.
AGENT_ROW_SQL = (
    "SELECT name, labels, status FROM resources WHERE kind = 'Agent' "
    "AND namespace = {session}.namespace AND name = {session}.agent LIMIT 1"
)
# The turn's start, written by the statement that claims it (`runtime/claim.py`), in the
# usual case, decided by the database: that statement leased the turn (its CTE `claimed`) for
# the first time, the agent row it found (its CTE `r`) resolves, and the session's (its CTE
# `s`) namespace has no knowledge, so the knowledge step's output is known beforehand. Every
# other case is written by `claim._begin`, in a transaction of its own.
_STARTABLE_CTE = f"""startable AS (
    SELECT claimed.id AS turn_id, s.uid AS session_uid, claimed.fencing_token
    FROM claimed, s, r
    WHERE claimed.attempts = 1 AND r.status->>'phase' = 'Resolved'
      AND {WITHOUT_KNOWLEDGE_SQL.format(ns="s.namespace")}
)"""
# Whether the CTEs of `start_ctes` started the turn (1) or not (0).
STARTED_SQL = RECORDED_SQL


def start_ctes() -> tuple[str, tuple[Any, ...]]:
    """The CTEs starting the turn a claiming statement leased, if it is the usual case (see
    above), and their parameters: comma-separated, without WITH, after the statement's
    `s`, `claimed` and `r`; `STARTED_SQL` says whether they did."""
    before, done, starting = start_steps(1, nothing_retrieved())
    ctes, params = record_when("startable", done, starting, before=before)
    return f"{_STARTABLE_CTE}, {ctes}", params


def start_steps(
    attempt: int, knowledge: dict[str, Any]
) -> tuple[list[tuple[str, dict[str, Any]]], Step, Step]:
    """A turn's start: its events before the knowledge step's, the knowledge step done, and
    the model step starting (`journal.record`'s arguments)."""
    before = [
        turn_started(attempt),
        ("step.started", {"step": KNOWLEDGE, "index": 0, "kind": "knowledge"}),
    ]
    return before, Step(0, KNOWLEDGE, "knowledge", "completed", knowledge), _MODEL_STARTING


_MODEL_STARTING = Step(1, MODEL, "model", "started", {})


def turn_started(attempt: int) -> tuple[str, dict[str, Any]]:
    return ("turn.started", {"attempt": attempt, "resumed": attempt > 1})
