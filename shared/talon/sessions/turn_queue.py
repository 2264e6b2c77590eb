"""Queue user messages as turns, any number at once, in one statement: each gets its message
row, its turn row, its `message.created` and `turn.queued` events and its dispatch outbox
row. The API posts one; a scheduler tick posts a thousand with the same SQL.

Each outbox row is notified as "dispatch <row id> <payload>": the postgres broker hands it to
a handler that claims it in the turn's own first transaction (`broker/postgres.py`)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from talon.broker.outbox import DISPATCH_TOPIC, OUTBOX_CHANNEL, OUTBOX_COMMITTED
from talon.sessions.events import EVENTS_CHANNEL, EVENTS_JSON_SQL, NOTIFY_PAYLOAD_SQL
from talon.store.database import Tx
from talon.telemetry.tracing import current_traceparent


@dataclass(frozen=True)
class NewTurn:
    session_uid: uuid.UUID
    content: str
    source: str = "api"
    idempotency_key: str | None = None
    request_hash: bytes = b""
    turn_id: uuid.UUID = field(default_factory=uuid.uuid4)
    # The span that queued it (a request, a schedule fire): the turn's trace continues there.
    traceparent: str | None = field(default_factory=current_traceparent)


@dataclass(frozen=True)
class QueuedTurn:
    turn_id: uuid.UUID
    input_seq: int
    stream_from: int  # the last event id before this turn's events


# Sessions get their counters moved once for all their new turns (several turns for one
# session keep their input order); every other table is only inserted into.
_QUEUE_SQL = f"""
WITH input AS (
    SELECT i.session_uid, i.turn_id, i.content, i.source, i.idempotency_key,
           decode(i.request_hash, 'hex') AS request_hash, i.traceparent, i.ord
    FROM jsonb_to_recordset(%s::jsonb) AS i(session_uid uuid, turn_id uuid, content text,
                                            source text, idempotency_key text,
                                            request_hash text, traceparent text, ord bigint)
), numbered AS (
    SELECT input.*,
           row_number() OVER (PARTITION BY session_uid ORDER BY ord) AS k,
           count(*) OVER (PARTITION BY session_uid) AS n
    FROM input
), per_session AS (
    SELECT session_uid, max(n) AS n FROM numbered GROUP BY session_uid
), s AS (
    UPDATE sessions SET last_message = last_message + p.n, last_turn = last_turn + p.n,
                        last_event_id = last_event_id + 2 * p.n, updated_at = now()
    FROM per_session p WHERE sessions.uid = p.session_uid
    RETURNING sessions.uid, sessions.namespace, sessions.id, sessions.last_message,
              sessions.last_turn, sessions.last_event_id, p.n
), w AS (
    SELECT nb.*, s.namespace, s.id, s.uid, s.last_message - s.n + nb.k AS seq,
           s.last_turn - s.n + nb.k AS turn_seq,
           s.last_event_id - 2 * (s.n - nb.k) AS last_event
    FROM numbered nb JOIN s ON s.uid = nb.session_uid
), m AS (
    INSERT INTO messages (session_uid, seq, role, content, turn_id)
    SELECT session_uid, seq, 'user', content, turn_id FROM w
), t AS (
    INSERT INTO turns (id, session_uid, seq, source, idempotency_key, request_hash, input_seq,
                       traceparent)
    SELECT turn_id, session_uid, turn_seq, source, idempotency_key, request_hash, seq,
           traceparent FROM w
), e AS (
    INSERT INTO session_events (session_uid, id, turn_id, type, data)
    SELECT session_uid, last_event - 1, turn_id, 'message.created',
           jsonb_build_object('seq', seq, 'role', 'user', 'content', content) FROM w
    UNION ALL
    SELECT session_uid, last_event, turn_id, 'turn.queued',
           jsonb_build_object('seq', turn_seq, 'source', source) FROM w
    RETURNING id, type, turn_id, data, created_at
), ev AS (
    SELECT e.turn_id, {EVENTS_JSON_SQL.format(e="e")} AS events FROM e GROUP BY e.turn_id
), o AS (
    INSERT INTO outbox (topic, key, payload)
    SELECT '{DISPATCH_TOPIC}', session_uid::text,
           jsonb_strip_nulls(jsonb_build_object('sessionUid', session_uid::text,
                                                'turnId', turn_id::text,
                                                'traceparent', traceparent))
    FROM w ORDER BY ord
    RETURNING id, (payload->>'turnId')::uuid AS turn_id, payload
)
SELECT w.ord, w.seq, w.last_event, o.id AS outbox_id,
       pg_notify('{EVENTS_CHANNEL}', {NOTIFY_PAYLOAD_SQL.format(s="w", events="ev.events")}),
       pg_notify('{OUTBOX_CHANNEL}', '{DISPATCH_TOPIC} ' || o.id || ' ' || o.payload::text)
FROM w JOIN o ON o.turn_id = w.turn_id JOIN ev ON ev.turn_id = w.turn_id ORDER BY w.ord
"""


def queue_turns(tx: Tx, turns: list[NewTurn], *, final: bool = False) -> list[QueuedTurn | None]:
    """Queue `turns` in order; None for a turn whose session does not exist. The caller holds
    whatever locks its checks need (the sessions' rows are locked here in any case).
    `final`: the transaction ends here (its COMMIT goes in the same round trip)."""
    if not turns:
        return []
    run = tx.commit_with if final else tx.all
    # One JSON parameter: pg8000 spends far longer escaping arrays than PostgreSQL does
    # parsing JSON.
    rows = run(_QUEUE_SQL, (json.dumps([
        {"session_uid": str(t.session_uid), "turn_id": str(t.turn_id), "content": t.content,
         "source": t.source, "idempotency_key": t.idempotency_key,
         "request_hash": t.request_hash.hex(), "traceparent": t.traceparent, "ord": n}
        for n, t in enumerate(turns, start=1)
    ]),))  # fmt: skip
    queued: list[QueuedTurn | None] = [None] * len(turns)
    for row in rows:
        index = int(row["ord"]) - 1
        queued[index] = QueuedTurn(
            turns[index].turn_id, int(row["seq"]), int(row["last_event"]) - 2
        )
        tx.announce(OUTBOX_COMMITTED, int(row["outbox_id"]))
    return queued
