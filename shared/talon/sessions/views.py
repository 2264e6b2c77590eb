"""How sessions, turns, messages and steps look in the API, read in the caller's transaction.

A turn's steps come from the step journal's table through `store/turn_steps.py` (the
journal, `runtime/journal.py`, writes them; this layer sits below the runtime, so it reads
through the table module both share rather than through the journal itself).
"""

from __future__ import annotations

import uuid
from typing import Any

from talon.sessions import messages
from talon.sessions.models import Session
from talon.store import turn_steps
from talon.store.database import Tx

RECENT_MESSAGES = 20

# A session row's open (queued or running) turns, as a select-list item of `sessions s`.
OPEN_TURNS_SQL = (
    "(SELECT count(*) FROM turns t WHERE t.session_uid = s.uid "
    "AND t.state IN ('queued', 'running')) AS open"
)


def iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def turn_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "seq": int(row["seq"]),
        "state": row["state"],
        "source": row["source"],
        "attempts": int(row["attempts"]),
        "provider": row["provider"],
        "error": row["error"],
        "createdAt": iso(row["created_at"]),
        "startedAt": iso(row["started_at"]),
        "finishedAt": iso(row["finished_at"]),
    }


def message_view(row: dict[str, Any]) -> dict[str, Any]:
    view: dict[str, Any] = {"seq": int(row["seq"]), "role": row["role"], "content": row["content"]}
    if row.get("tool_calls"):
        view["toolCalls"] = row["tool_calls"]
    if row.get("tool_call_id"):
        view["toolCallId"] = row["tool_call_id"]
    view["turnId"] = str(row["turn_id"]) if row.get("turn_id") else None
    view["createdAt"] = iso(row["created_at"])
    return view


# A tool call's arguments and result as the stream's step events and the turn view show them,
# so a viewer sees them before the turn's messages are written; bounded so an event stays
# small (the whole of both is in the session's messages once the turn ends). Nothing else
# goes in: header values and secret references never reach the journal.
ARGUMENTS_PREVIEW_CHARS = 2_000
RESULT_PREVIEW_CHARS = 2_000


def tool_call_preview(output: dict[str, Any], *, with_result: bool) -> dict[str, Any]:
    """A tool step's call (`tool`, `callId`, `arguments`) and, `with_result`, its `result`,
    each cut to its preview length (`<field>Truncated`: the full length, when cut)."""
    call = output.get("call")
    if not isinstance(call, dict):
        return {}
    preview: dict[str, Any] = {"tool": call.get("name"), "callId": call.get("id")}
    _cut(preview, "arguments", str(call.get("arguments") or ""), ARGUMENTS_PREVIEW_CHARS)
    if with_result and "result" in output:
        _cut(preview, "result", str(output["result"]), RESULT_PREVIEW_CHARS)
    return preview


def _cut(into: dict[str, Any], key: str, text: str, limit: int) -> None:
    into[key] = text[:limit]
    if len(text) > limit:
        into[f"{key}Truncated"] = len(text)


def steps_view(tx: Tx, turn_id: uuid.UUID, *, outputs: bool = False) -> list[dict[str, Any]]:
    """The turn's steps in order; a tool step with its call's preview; with each one's
    `output` (as journaled) if `outputs`."""
    views = []
    for step in turn_steps.read(tx, turn_id, outputs=True if outputs else "tool"):
        view: dict[str, Any] = {
            "index": step.idx,
            "name": step.name,
            "kind": step.kind,
            "state": step.state,
            "startedAt": iso(step.started_at),
            "completedAt": iso(step.completed_at),
        }
        if step.kind == "tool" and step.output is not None:
            view.update(tool_call_preview(step.output, with_result=step.state != "started"))
        if outputs:
            view["output"] = step.output
        views.append(view)
    return views


# First in a transaction that reads a view in several statements (READ COMMITTED gives each
# statement its own snapshot).
SNAPSHOT_SQL = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"


def summary(tx: Tx, session: dict[str, Any]) -> dict[str, Any]:
    """A session in lists: its row, the turn running or next to run, the queue's length."""
    active = tx.one(
        "SELECT * FROM turns WHERE session_uid = %s AND state IN ('queued', 'running') "
        "ORDER BY seq LIMIT 1",
        (session["uid"],),
    )
    queued = tx.scalar(
        "SELECT count(*) FROM turns WHERE session_uid = %s AND state = 'queued'",
        (session["uid"],),
    )
    return {
        "id": session["id"],
        "agent": session["agent"],
        "ns": session["namespace"],
        "status": session["status"],
        "metadata": session["metadata"],
        "activeTurn": turn_view(active) if active else None,
        "queuedTurns": int(queued),
        "messageCount": int(session["last_message"]),
        "lastEventId": int(session["last_event_id"]),
        "createdAt": iso(session["created_at"]),
        "updatedAt": iso(session["updated_at"]),
    }


def session_view(tx: Tx, session: dict[str, Any]) -> dict[str, Any]:
    """The seed's shape: summary plus recent messages and the latest turn's steps."""
    view = summary(tx, session)
    recent = messages.recent(tx, session["uid"], RECENT_MESSAGES)
    view["messages"] = [
        {"role": m["role"], "content": m["content"]} for m in recent if m["role"] != "tool"
    ]
    latest = tx.one(
        "SELECT id FROM turns WHERE session_uid = %s ORDER BY seq DESC LIMIT 1",
        (session["uid"],),
    )
    view["stream"] = (
        [{"step": s["name"], "state": s["state"]} for s in steps_view(tx, latest["id"])]
        if latest
        else []
    )
    return Session.model_validate(view).model_dump(mode="json")
