"""The per-session event log behind the SSE stream.

Events are rows numbered per session inside the writer's transaction, so an event exists iff
the change it reports was committed, and a reader resuming after id N misses nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from talon.store.database import Tx, jsonb

# Channel for LISTEN/NOTIFY wake-ups; the payload is the session uid.
EVENTS_CHANNEL = "talon_session_events"
TERMINAL_TURN_EVENTS = frozenset({"turn.completed", "turn.failed", "turn.cancelled"})


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    turn_id: str | None
    data: dict[str, Any]
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "turnId": self.turn_id,
            "data": self.data,
            "createdAt": self.created_at.isoformat().replace("+00:00", "Z"),
        }


def append(
    tx: Tx,
    session_uid: uuid.UUID,
    events: list[tuple[str, dict[str, Any]]],
    turn_id: uuid.UUID | None = None,
) -> int:
    """Append events in order; return the last id. Takes the session row lock."""
    last = tx.scalar(
        "UPDATE sessions SET last_event_id = last_event_id + %s, updated_at = now() "
        "WHERE uid = %s RETURNING last_event_id",
        (len(events), session_uid),
    )
    first = last - len(events) + 1
    for offset, (event_type, data) in enumerate(events):
        tx.execute(
            "INSERT INTO session_events (session_uid, id, turn_id, type, data) "
            "VALUES (%s, %s, %s, %s, %s::jsonb)",
            (session_uid, first + offset, turn_id, event_type, jsonb(data)),
        )
    # Delivered on commit only, so a woken reader always finds the rows.
    tx.execute("SELECT pg_notify(%s, %s)", (EVENTS_CHANNEL, str(session_uid)))
    return int(last)


def read_after(tx: Tx, session_uid: uuid.UUID, after: int, limit: int = 500) -> list[Event]:
    rows = tx.all(
        "SELECT id, type, turn_id, data, created_at FROM session_events "
        "WHERE session_uid = %s AND id > %s ORDER BY id LIMIT %s",
        (session_uid, after, limit),
    )
    return [
        Event(
            int(r["id"]),
            r["type"],
            str(r["turn_id"]) if r["turn_id"] else None,
            r["data"],
            r["created_at"],
        )
        for r in rows
    ]
