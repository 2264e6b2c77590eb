"""What a turn runs with: the agent's effective spec, knowledge and the message history."""

from __future__ import annotations

import json
import uuid
from typing import Any

from talon.knowledge.index import leased_retrieval, retrieve, retrieved
from talon.runtime.tools.base import AgentContext
from talon.runtime.transcript import paired
from talon.sessions import messages
from talon.store.database import Tx

HISTORY_TURNS = 40  # earlier turns sent to the model; whole turns, so tool pairs stay intact
KNOWLEDGE_BUDGET_CHARS = 32_000


class TurnFailure(Exception):
    """The turn cannot complete; it is marked failed with this code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def agent_context(tx: Tx, session: dict[str, Any]) -> AgentContext:
    row = tx.one(
        "SELECT labels, status FROM resources WHERE kind = 'Agent' AND namespace = %s "
        "AND name = %s",
        (session["namespace"], session["agent"]),
    )
    return agent_from_row(session, row)


# An agent's resource row as of now, by its whole key.
_AGENT_ROW_NOW_SQL = (
    "SELECT labels, status FROM resources WHERE kind = 'Agent' AND namespace = %s AND name = %s"
)


def claimed_agent(row: dict[str, Any], tx: Tx | None = None) -> AgentContext:
    """A claimed turn's agent, from the agent row its claiming statement read (the row's
    `agent_found`, `agent_labels` and `agent_status`). With `tx`, a row that does not resolve
    is read again first: failing the turn cannot be undone, and the claim read the row as of
    its statement's start, which may have come before a wait for the session's lock.
    TurnFailure if it does not resolve."""
    session = {"namespace": row["namespace"], "id": row["session_id"], "agent": row["agent"]}
    found = {"labels": row["agent_labels"], "status": row["agent_status"]}
    try:
        return agent_from_row(session, found if row["agent_found"] else None)
    except TurnFailure:
        if tx is None:
            raise
    now = tx.one(_AGENT_ROW_NOW_SQL, (row["namespace"], row["agent"]))
    return agent_from_row(session, now)


def agent_from_row(session: dict[str, Any], row: dict[str, Any] | None) -> AgentContext:
    """The session's agent from its resource row (`labels`, `status`; None: it is gone)."""
    if row is None:
        raise TurnFailure("agent_not_found", f"agent {session['agent']!r} no longer exists")
    status = row["status"] or {}
    if status.get("phase") != "Resolved":
        raise TurnFailure(
            "agent_not_resolved",
            f"agent {session['agent']!r} does not resolve: {status.get('message', '')}",
        )
    return AgentContext(
        session["namespace"], session["agent"], session["id"], status["effective"], row["labels"]
    )


def leased_knowledge(session_uid: uuid.UUID, owner: str) -> tuple[str, tuple[Any, ...]]:
    """The statement retrieving knowledge for the input of the session's running turn that
    `owner` leases, sent with the claim that leases it; its rows go to `knowledge_from`."""
    return leased_retrieval(session_uid, owner)


def knowledge_from(
    tx: Tx, namespace: str, query: str, rows: list[dict[str, Any]] | None
) -> dict[str, Any]:
    """The namespace's knowledge chunks that best match the turn's input (`query`), from the
    rows of `leased_knowledge`, or retrieved now if it was not sent (`rows` None)."""
    if rows is None:
        return retrieve(tx, namespace, query, budget_chars=KNOWLEDGE_BUDGET_CHARS)
    return retrieved(tx, namespace, query, rows, budget_chars=KNOWLEDGE_BUDGET_CHARS)


def turn_input(history: list[dict[str, Any]]) -> str:
    """The user message that started the turn (the last one in its history)."""
    for message in reversed(history):
        if message["role"] == "user":
            return str(message.get("content") or "")
    return ""


def leased_history(
    session_uid: uuid.UUID, owner: str, after: int = 0
) -> tuple[str, tuple[Any, ...]]:
    """The statement reading the history window (`HISTORY_TURNS` turns) of the session's
    running turn that `owner` leases, as what a copy holding the session's messages up to
    `after` lacks (`runtime/history_cache.py`), sent with the claim that leases it; its row
    goes to `messages.window_since`, then to `HistoryCache.window`."""
    return messages.leased_window_since(session_uid, owner, HISTORY_TURNS, after)


def turn_history(session_uid: uuid.UUID, turn_id: uuid.UUID) -> tuple[str, tuple[Any, ...]]:
    """`leased_history` of the turn `turn_id`, read whole, whoever holds it now."""
    return messages.turn_window_since(session_uid, turn_id, HISTORY_TURNS)


def chat_history(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A window's messages (`HistoryCache.window`) in OpenAI chat format, paired."""
    return paired(
        [to_chat(r["role"], r["content"], r["tool_calls"], r["tool_call_id"]) for r in rows]
    )


def to_chat(
    role: str, content: str, tool_calls: list[dict[str, Any]] | None, tool_call_id: str | None
) -> dict[str, Any]:
    # An assistant message that only calls tools has null content, as providers send it.
    message: dict[str, Any] = {"role": role, "content": content or (None if tool_calls else "")}
    if tool_calls:
        message["tool_calls"] = [
            {"id": c["id"], "type": "function",
             "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in tool_calls
        ]  # fmt: skip
    if role == "tool":
        message["tool_call_id"] = tool_call_id or ""
    return message


def system_prompt(context: AgentContext, knowledge: dict[str, Any]) -> str:
    effective = context.effective
    parts = [effective.get("systemPrompt", "").strip()]
    features = effective.get("features") or {}
    if features:
        parts.append("Agent features:\n" + json.dumps(features, sort_keys=True))
    if knowledge.get("context"):
        parts.append("Knowledge for this namespace:\n\n" + knowledge["context"])
    return "\n\n".join(p for p in parts if p)
