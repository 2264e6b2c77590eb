"""Queue user messages as turns, any number at once, in one statement: each gets its message
row, its turn row, its `message.created` and `turn.queued` events and its dispatch outbox
row. A scheduler tick queues a thousand in one statement; a posted message has a statement
for one turn, the same writes with fewer plan nodes.

Each outbox row is notified as "dispatch <row id> <payload>": the postgres broker hands it to
a handler that claims it in the turn's own first transaction (`broker/postgres.py`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from talon.broker.outbox import DISPATCH_TOPIC, OUTBOX_CHANNEL, OUTBOX_COMMITTED, OutboxRow
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
    session_uid: uuid.UUID
    # The turn's first events as queued (`message.created`, `turn.queued`), when asked for:
    # the stream's JSON (`events.from_json`), so a stream of the posted turn starts without
    # reading them back.
    events_json: str | None


_BY_UID = """
    SELECT i.session_uid, i.turn_id, i.content, i.source, i.idempotency_key,
           decode(i.request_hash, 'hex') AS request_hash, i.traceparent, i.ord
    FROM jsonb_to_recordset(%s::jsonb) AS i(session_uid uuid, turn_id uuid, content text,
                                            source text, idempotency_key text,
                                            request_hash text, traceparent text, ord bigint)
"""
# Sessions get their counters moved once for all their new turns (several turns for one
# session keep their input order); every other table is only inserted into.
_QUEUE_SQL = f"""
WITH input AS ({{input}}), numbered AS (
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
                       traceparent, stream_from)
    SELECT turn_id, session_uid, turn_seq, source, idempotency_key, request_hash, seq,
           traceparent, last_event - 2 FROM w
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
SELECT w.ord, w.seq, w.last_event, w.uid, {{events}} AS events, o.id AS outbox_id,
       o.payload AS outbox_payload,
       pg_notify('{EVENTS_CHANNEL}', {NOTIFY_PAYLOAD_SQL.format(s="w", events="ev.events")}),
       pg_notify('{OUTBOX_CHANNEL}', '{DISPATCH_TOPIC} ' || o.id || ' ' || o.payload::text)
FROM w JOIN o ON o.turn_id = w.turn_id JOIN ev ON ev.turn_id = w.turn_id ORDER BY w.ord
"""
_QUEUE_BY_UID_SQL = _QUEUE_SQL.format(input=_BY_UID, events="NULL")
# A posted message's turn (`queue_posted`), in one statement with the session's lock, its
# session named as in the URL: the turn is inserted first, only if the session is the agent's,
# and the (session, key) unique index decides whether the Idempotency-Key queued one already
# (`ON CONFLICT DO NOTHING`, which also waits for a request with the key that is still being
# written, and sees one committed after this statement began); every other write depends on
# that insert, so a refused key or another agent's session writes nothing. The counters come
# from the session row as its lock found it (the newest: FOR UPDATE reads what a transaction
# it waited for committed), and the session's UPDATE moves them from that row. The rows,
# events, outbox row and notifications are `_QUEUE_SQL`'s for one turn, without what numbering
# several turns per session takes (a record set, a window, a grouping, the joins back):
# PostgreSQL initialises every plan node at every execution, and this statement runs for every
# message. Its one row says which session it locked and whose it is, and the queued turn if
# one was (none: the key's turn is the answer).
_POST_SQL = f"""
WITH lk AS (
    SELECT uid, agent, last_message, last_turn, last_event_id FROM sessions
    WHERE namespace = %s AND id = %s FOR UPDATE
), t AS (
    INSERT INTO turns (id, session_uid, seq, source, idempotency_key, request_hash, input_seq,
                       traceparent, stream_from)
    SELECT %s::uuid, uid, last_turn + 1, %s, %s, decode(%s, 'hex'), last_message + 1, %s,
           last_event_id
    FROM lk WHERE agent = %s
    ON CONFLICT (session_uid, idempotency_key) DO NOTHING RETURNING session_uid
), s AS (
    UPDATE sessions SET last_message = last_message + 1, last_turn = last_turn + 1,
                        last_event_id = last_event_id + 2, updated_at = now()
    FROM t WHERE sessions.uid = t.session_uid
    RETURNING sessions.uid, sessions.namespace, sessions.id, last_message AS seq,
              last_turn AS turn_seq, last_event_id AS last_event
), m AS (
    INSERT INTO messages (session_uid, seq, role, content, turn_id)
    SELECT uid, seq, 'user', %s, %s::uuid FROM s
), e AS (
    INSERT INTO session_events (session_uid, id, turn_id, type, data)
    SELECT uid, last_event - 1, %s::uuid, 'message.created',
           jsonb_build_object('seq', seq, 'role', 'user', 'content', %s::text) FROM s
    UNION ALL
    SELECT uid, last_event, %s::uuid, 'turn.queued',
           jsonb_build_object('seq', turn_seq, 'source', %s::text) FROM s
    RETURNING id, type, turn_id, data, created_at
), ev AS (
    SELECT {EVENTS_JSON_SQL.format(e="e")} AS events FROM e
), o AS (
    INSERT INTO outbox (topic, key, payload)
    SELECT '{DISPATCH_TOPIC}', uid::text,
           jsonb_strip_nulls(jsonb_build_object('sessionUid', uid::text, 'turnId', %s::text,
                                                'traceparent', %s::text))
    FROM s RETURNING id, payload
), q AS (
    SELECT 1 AS ord, s.seq, s.last_event, s.uid, {{events}} AS events, o.id AS outbox_id,
           o.payload AS outbox_payload,
           pg_notify('{EVENTS_CHANNEL}', {NOTIFY_PAYLOAD_SQL.format(s="s", events="ev.events")})
               AS notified_events,
           pg_notify('{OUTBOX_CHANNEL}', '{DISPATCH_TOPIC} ' || o.id || ' ' || o.payload::text)
               AS notified_dispatch
    FROM s, o, ev
)
SELECT lk.uid AS locked_uid, lk.agent, q.* FROM lk LEFT JOIN q ON true
"""
# The turn's first events come back only to a caller that streams them: they carry the
# message, up to MAX_MESSAGE_CHARS (and a scheduler's tick queues thousands).
_POST_WITH_EVENTS_SQL = _POST_SQL.format(events="ev.events")
_POST_SQL = _POST_SQL.format(events="NULL")


def queue_turns(tx: Tx, turns: list[NewTurn], *, final: bool = False) -> list[QueuedTurn | None]:
    """Queue `turns` in order; None for a turn whose session does not exist. The caller holds
    whatever locks its checks need (the sessions' rows are locked here in any case).
    `final`: the transaction ends here (its COMMIT goes in the same round trip)."""
    if not turns:
        return []
    rows = (tx.commit_with if final else tx.all)(_QUEUE_BY_UID_SQL, (_records(turns),))
    return _queued(tx, turns, rows)


@dataclass(frozen=True)
class PostedTurn:
    """A posted message's turn, its session named as in the URL (`queue_posted`)."""

    namespace: str
    session_id: str
    agent: str
    content: str
    source: str
    idempotency_key: str | None
    request_hash: bytes
    turn_id: uuid.UUID = field(default_factory=uuid.uuid4)
    traceparent: str | None = field(default_factory=current_traceparent)


@dataclass(frozen=True)
class Posted:
    """What `queue_posted` found: the session it locked, whose it is, and the turn it queued
    (None: it was another agent's, or the Idempotency-Key had queued one already)."""

    session_uid: uuid.UUID
    agent: str
    queued: QueuedTurn | None


def queue_posted(tx: Tx, turn: PostedTurn, *, with_events: bool = False) -> Posted | None:
    """Lock the session, queue `turn` (`_POST_SQL`) and COMMIT, in one statement and round
    trip. None, and nothing written, when there is no such session. `with_events`: the
    turn's first events come back (`QueuedTurn.events_json`)."""
    sql = _POST_WITH_EVENTS_SQL if with_events else _POST_SQL
    turn_id, content = str(turn.turn_id), turn.content
    params = (
        turn.namespace, turn.session_id,  # lk
        turn_id, turn.source, turn.idempotency_key, turn.request_hash.hex(), turn.traceparent,
        turn.agent,  # t
        content, turn_id,  # m
        turn_id, content, turn_id, turn.source,  # e
        turn_id, turn.traceparent,  # o
    )  # fmt: skip
    rows = tx.commit_with(sql, params)
    if not rows:
        return None
    queued = _queued(tx, [turn], rows if rows[0]["ord"] is not None else [])[0]
    return Posted(rows[0]["locked_uid"], rows[0]["agent"], queued)


def _records(turns: Sequence[NewTurn]) -> str:
    # One JSON parameter: pg8000 spends far longer escaping arrays than PostgreSQL does
    # parsing JSON.
    records = []
    for n, t in enumerate(turns, start=1):
        record: dict[str, Any] = {
            "turn_id": str(t.turn_id), "content": t.content, "source": t.source,
            "idempotency_key": t.idempotency_key, "request_hash": t.request_hash.hex(),
            "traceparent": t.traceparent, "ord": n, "session_uid": str(t.session_uid),
        }  # fmt: skip
        records.append(record)
    return json.dumps(records)


def _queued(
    tx: Tx, turns: Sequence[NewTurn | PostedTurn], rows: list[dict[str, Any]]
) -> list[QueuedTurn | None]:
    queued: list[QueuedTurn | None] = [None] * len(turns)
    for row in rows:
        index = int(row["ord"]) - 1
        queued[index] = QueuedTurn(
            turns[index].turn_id,
            int(row["seq"]),
            int(row["last_event"]) - 2,
            row["uid"],
            row["events"],
        )
        outbox = OutboxRow(int(row["outbox_id"]), DISPATCH_TOPIC, str(row["uid"]),
                           row["outbox_payload"])  # fmt: skip
        tx.announce(OUTBOX_COMMITTED, outbox)
    return queued
