"""A turn's start: the events and the knowledge step that open it, and the statement that
writes them in its claim's round trip when the database finds the turn is the usual one
(`runtime/claim.py`)."""

from __future__ import annotations

import uuid
from typing import Any

from talon.knowledge.index import WITHOUT_KNOWLEDGE_SQL, nothing_retrieved
from talon.runtime.journal import KNOWLEDGE, MODEL, RECORDED_SQL, Step, record_when

# The turn's start, sent with its claim and committed in the claim's round trip, in the usual
# case, decided by the database: this transaction claimed the turn (the row's version is its
# own) for the first time, its agent resolves, and its namespace has no knowledge, so the
# knowledge step's output is known beforehand. Every other case is written by `claim._begin`,
# in a transaction of its own. It returns the agent row it found resolved: each statement reads
# the tables as of its own start, and the claim's may have seen another version of it.
# The agent row of the session `{session}` (an alias), by its whole key in any plan: as a
# plain join, a generic plan made on a young database (a handful of agents, equal costs)
# looked it up by `kind` alone and filtered every tenant's agents. The LIMIT keeps PostgreSQL
# from flattening it into that join.
AGENT_ROW_SQL = (
    "SELECT name, labels, status FROM resources WHERE kind = 'Agent' "
    "AND namespace = {session}.namespace AND name = {session}.agent LIMIT 1"
)
STARTABLE_CTE = f"""startable AS (
    SELECT t.id AS turn_id, t.session_uid, t.fencing_token, r.labels, r.status FROM turns t
    JOIN sessions s ON s.uid = t.session_uid
    CROSS JOIN LATERAL ({AGENT_ROW_SQL.format(session="s")}) r
    WHERE t.session_uid = %s AND t.state = 'running' AND t.attempts = 1
      AND t.xmin = pg_current_xact_id_if_assigned()::xid
      AND r.status->>'phase' = 'Resolved' AND {WITHOUT_KNOWLEDGE_SQL.format(ns="s.namespace")}
)"""


def start_statement(session_uid: uuid.UUID) -> tuple[str, tuple[Any, ...]]:
    before, done, starting = start_steps(1, nothing_retrieved())
    ctes, params = record_when("startable", done, starting, before=before)
    return (
        f"WITH {STARTABLE_CTE}, {ctes} SELECT {RECORDED_SQL} AS started, "
        "(SELECT labels FROM startable) AS labels, (SELECT status FROM startable) AS status",
        (session_uid, *params),
    )


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
