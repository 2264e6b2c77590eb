"""The per-session event log behind the SSE stream.

Events are rows numbered per session inside the writer's transaction, so an event exists iff
the change it reports was committed, and a reader resuming after id N misses nothing.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from talon.store.database import Tx, jsonb

# Channel for LISTEN/NOTIFY: the payload is "<namespace>/<session id> <session uid>", then,
# when they fit in a notification, a space and the new events as a JSON list (what a stream
# sends), so an open stream needs no query per wake-up. Without events it means "read".
EVENTS_CHANNEL = "talon_session_events"
# PostgreSQL refuses payloads of 8000 bytes or more; the key takes at most ~200.
NOTIFY_EVENTS_MAX_BYTES = 7_600
# An event's time as the stream shows it (UTC, microseconds), formatted by PostgreSQL for
# both paths a stream reads: the notification's JSON and the table.
CREATED_AT_SQL = "to_char({e}.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
# The events' JSON as the stream sends it, built by PostgreSQL for the notification.
EVENTS_JSON_SQL = (
    "json_agg(json_build_object('id', {e}.id, 'type', {e}.type, 'turnId', {e}.turn_id, "
    "'data', {e}.data, 'createdAt', " + CREATED_AT_SQL + ") ORDER BY {e}.id)::text"
)
NOTIFY_PAYLOAD_SQL = (
    "{s}.namespace || '/' || {s}.id || ' ' || {s}.uid::text || CASE WHEN octet_length({events}) <= "
    f"{NOTIFY_EVENTS_MAX_BYTES} THEN ' ' || {{events}} ELSE '' END"
)
TERMINAL_TURN_EVENTS = frozenset({"turn.completed", "turn.failed", "turn.cancelled"})
READ_LIMIT = 500  # events per read


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    turn_id: str | None
    data: dict[str, Any]
    created_at: str  # as the stream shows it (CREATED_AT_SQL)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "turnId": self.turn_id,
            "data": self.data,
            "createdAt": self.created_at,
        }


def stream_key(namespace: str, session_id: str) -> str:
    """What a stream subscribes to: notifications name the session as it is addressed."""
    return f"{namespace}/{session_id}"


def append(
    tx: Tx,
    session_uid: uuid.UUID,
    events: list[tuple[str, dict[str, Any]]],
    turn_id: uuid.UUID | None = None,
) -> None:
    """Append events in order (none if the session is gone). Takes the session row lock.
    One statement: numbering, rows and the wake-up, whatever the count; deferred, so it
    travels with the transaction's next statement or its COMMIT (nobody waits for it)."""
    ctes, params = appending_ctes("given", events)
    tx.defer(
        "WITH given AS (SELECT %s::uuid AS session_uid, %s::uuid AS turn_id), "
        f"{ctes} SELECT {APPENDED_SQL}",
        (session_uid, turn_id, *params),
    )


# How many sessions `appending_ctes` appended to (0 or 1); a statement must read it, or
# PostgreSQL skips the notification (it skips a SELECT in WITH that nothing reads).
APPENDED_SQL = "(SELECT count(*) FROM ap_notified)"


def appending_ctes(
    gate: str, events: list[tuple[str, dict[str, Any]]]
) -> tuple[str, tuple[Any, ...]]:
    """CTEs appending `events` in order, with their notification, to the session of the row
    the CTE `{gate}` returns (its `session_uid`; the events' turn is its `turn_id`), or to
    nothing if it returns none: a statement's other CTEs may decide whether they happen (a
    turn's start, sent with its claim). The gate returns at most one row. Takes the
    session row lock. Comma-separated, without WITH; read `APPENDED_SQL`."""
    # One JSON parameter: pg8000 escapes a text[] parameter character by character, which
    # cost the worker more than any other part of a turn's statements.
    sql = (
        "ap_s AS (UPDATE sessions SET last_event_id = last_event_id + %s, updated_at = now() "
        f"  WHERE uid = (SELECT session_uid FROM {gate}) "
        "  RETURNING last_event_id, namespace, id, uid), "
        "ap_ins AS (INSERT INTO session_events (session_uid, id, turn_id, type, data) "
        "  SELECT ap_s.uid, ap_s.last_event_id - %s + a.ord, "
        f"  (SELECT turn_id FROM {gate}), a.event->>0, a.event->1 "
        "  FROM ap_s, jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS a(event, ord) "
        "  RETURNING id, type, turn_id, data, created_at), "
        f"ap_json AS (SELECT {EVENTS_JSON_SQL.format(e='ap_ins')} AS events FROM ap_ins), "
        # Delivered on commit only, so a woken reader always finds the rows.
        f"ap_notified AS (SELECT pg_notify('{EVENTS_CHANNEL}', "
        f"{NOTIFY_PAYLOAD_SQL.format(s='ap_s', events='ap_json.events')}) FROM ap_s, ap_json)"
    )
    payload = jsonb([[event_type, data] for event_type, data in events])
    return sql, (len(events), len(events), payload)


def completion_ctes(
    turn_id: uuid.UUID, events: list[tuple[str, dict[str, Any], int | None]], messages: int
) -> tuple[str, tuple[Any, ...]]:
    """CTEs appending a completing turn's `events`, with their notification, for the
    statement that completes it (`sessions/messages.completing`): its CTE `cs` has moved the
    session's counters (`last_event_id` by len(events), `last_message` by `messages`) and
    returns its row; its CTE `open` counts the session's other open turns. An event's third
    element is, for a `message.created`, its message's ordinal among those written, whose seq
    it gets; `turn.completed` gets `openTurns`. Comma-separated, without WITH."""
    sql = (
        "ev_ins AS (INSERT INTO session_events (session_uid, id, turn_id, type, data) "
        "  SELECT cs.uid, cs.last_event_id - %s + a.ord, %s::uuid, a.event->>0, "
        "  (a.event->1) || CASE WHEN jsonb_typeof(a.event->2) = 'number' "
        "    THEN jsonb_build_object('seq', cs.last_message - %s + (a.event->>2)::bigint) "
        "    WHEN a.event->>0 = 'turn.completed' "
        "    THEN jsonb_build_object('openTurns', (SELECT n FROM open)) ELSE '{}'::jsonb END "
        "  FROM cs, jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS a(event, ord) "
        "  RETURNING id, type, turn_id, data, created_at), "
        f"ev_json AS (SELECT {EVENTS_JSON_SQL.format(e='ev_ins')} AS events FROM ev_ins), "
        # Delivered on commit only, so a woken reader always finds the rows.
        f"notified AS (SELECT pg_notify('{EVENTS_CHANNEL}', "
        f"{NOTIFY_PAYLOAD_SQL.format(s='cs', events='ev_json.events')}) FROM cs, ev_json)"
    )
    payload = jsonb([list(event) for event in events])
    return sql, (len(events), turn_id, messages, payload)


def open_turns(tx: Tx, session_uid: uuid.UUID) -> int:
    """The session's queued and running turns: the `openTurns` of a terminal turn event, so a
    stream following one turn knows whether another is open without a read. Call with the
    session row locked and after this transaction's own turn changes, so it is the count
    at commit."""
    return int(
        tx.scalar(
            "SELECT count(*) FROM turns WHERE session_uid = %s AND state IN ('queued', 'running')",
            (session_uid,),
        )
    )


def after_sql(session: str) -> str:
    """A scalar subquery: the events of session `{session}.uid` after the id in its first
    parameter, at most its second parameter of them, as the stream's JSON (`from_json`)."""
    return (
        f"(SELECT {EVENTS_JSON_SQL.format(e='e')} FROM (SELECT * FROM session_events "
        f"WHERE session_uid = {session}.uid AND id > %s ORDER BY id LIMIT %s) e)"
    )


def from_json(text: str | None) -> list[Event]:
    """The events `after_sql` (or a notification) carries."""
    return [
        Event(int(e["id"]), e["type"], e["turnId"], e["data"], e["createdAt"])
        for e in json.loads(text or "[]")
    ]


def read_after(tx: Tx, session_uid: uuid.UUID, after: int, limit: int = READ_LIMIT) -> list[Event]:
    rows = tx.all(
        "SELECT id, type, turn_id, data, "
        f"{CREATED_AT_SQL.format(e='session_events')} AS created_at FROM session_events "
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
