"""Benchmark: the database floor under Talon's contract — what PostgreSQL spends per turn on
the fewest and simplest statements that keep everything a Talon turn promises, written for
this benchmark with no Talon code, on Talon's own schema.

`bench/pg_floor.py` is the floor of a turn's durable writes alone. A Talon turn also keeps
its contract, and this benchmark writes each part of it the cheapest way found, in three
round trips on two connections (a gateway's and a worker's, as deployed):
- the message (the gateway's connection): the session addressed by namespace and id and
  checked to be the agent's, locked; the turn queued unless its Idempotency-Key queued one
  already (the key's unique index decides, without a lookup); the message, the turn, its
  `message.created` and `turn.queued` events with their data, the dispatch row, and the two
  notifications with their payloads (the events' JSON, the dispatch row); the events come
  back to the poster; one statement, committed;
- the claim (the worker's connection): the delivery's claim, and only if it took, the
  session's lock, its oldest open turn's lease (fencing token, attempts, a live lease left
  alone), the agent's resource resolved and the namespace without knowledge, and the turn's
  start: the knowledge step's row and four events (`turn.started`, the knowledge step's
  start and end, the model step's start) with their notification; one statement, with the
  history window in the same round trip (what a worker's copy lacks, and where the window
  starts), committed;
- the final write (the worker's connection): the fencing check, the turn's completion, the
  model step's row with its answer, its usage row, the write step's row, the answer, six
  events (the model step's end, the answer's delta, the write step's start and end, the
  `message.created`, `turn.completed` with the session's open turns) and their
  notification, and the delivery's removal if the session has no other open turn; one
  statement, committed.
Two connections LISTEN as the gateway's and the worker's do. The open turns are counted as
the session's turns after this one (the session's turns finish in order); everything else
is checked as Talon checks it. `--push`: the deployed topology's (Pub/Sub push): the dispatch
row is published, not claimed or removed by the worker, the published rows are deleted 64 at
a time in a transaction of their own, and only the gateway listens.

What PostgreSQL spends per turn depends on how the turns arrive, not only on the statements:
`--clients N` drives N sessions at once (a thread each), as `bench/turns.py --clients N`
does, each with a gateway's and a worker's connection of its own or, with `--connections K`,
over K such pairs taken a round trip at a time, as a pool shares them (fewer backends cost
less: compare K); `--think-ms T` pauses T ms before each of a turn's three round trips, as
the HTTP hops and the model call do in a Talon turn (a backend woken from idle costs more
than one kept busy). Compare Talon with the floor run the same way.

    .venv/bin/python bench/pg_contract.py --turns 3000
    .venv/bin/python bench/pg_contract.py --turns 3200 --clients 16 --connections 2
    .venv/bin/python bench/pg_contract.py --turns 3000 --think-ms 2
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pg_floor import (
    PUBLISHED,
    cpu_by_process,
    cpu_since,
    listening,
    listening_afresh,
    migrated_cluster,
    per_turn,
)
from turns import commits, wal_position

from talon.store import statements

HISTORY_TURNS = 40
WORKER = "worker-1"

# As the stream shows events (Talon's `sessions/events.EVENTS_JSON_SQL`).
EVENTS_JSON = (
    "json_agg(json_build_object('id', {e}.id, 'type', {e}.type, 'turnId', {e}.turn_id, "
    "'data', {e}.data, 'createdAt', to_char({e}.created_at AT TIME ZONE 'UTC', "
    '\'YYYY-MM-DD"T"HH24:MI:SS.US"Z"\')) ORDER BY {e}.id)::text'
)

MESSAGE = f"""
WITH lk AS (
    SELECT uid, namespace, id, last_message, last_turn, last_event_id FROM sessions
    WHERE namespace = $1 AND id = $2 AND agent = $3 FOR UPDATE
), t AS (
    INSERT INTO turns (id, session_uid, seq, source, idempotency_key, request_hash, input_seq,
                       stream_from)
    SELECT $4, uid, last_turn + 1, 'api', $5, $6, last_message + 1, last_event_id FROM lk
    ON CONFLICT (session_uid, idempotency_key) DO NOTHING RETURNING session_uid
), s AS (
    UPDATE sessions SET last_message = last_message + 1, last_turn = last_turn + 1,
                        last_event_id = last_event_id + 2, updated_at = now()
    FROM t WHERE sessions.uid = t.session_uid
    RETURNING sessions.uid, sessions.namespace, sessions.id, last_message, last_turn,
              last_event_id
), m AS (
    INSERT INTO messages (session_uid, seq, role, content, turn_id)
    SELECT uid, last_message, 'user', $7, $4 FROM s
), e AS (
    INSERT INTO session_events (session_uid, id, turn_id, type, data)
    SELECT uid, last_event_id - 1, $4, 'message.created',
           jsonb_build_object('seq', last_message, 'role', 'user', 'content', $7::text) FROM s
    UNION ALL
    SELECT uid, last_event_id, $4, 'turn.queued',
           jsonb_build_object('seq', last_turn, 'source', 'api') FROM s
    RETURNING id, type, turn_id, data, created_at
), ev AS (
    SELECT {EVENTS_JSON.format(e="e")} AS events FROM e
), o AS (
    INSERT INTO outbox (topic, key, payload)
    SELECT 'dispatch', uid::text, jsonb_build_object('sessionUid', uid::text, 'turnId', $4::text)
    FROM s RETURNING id, payload
)
SELECT s.last_message, s.last_event_id, o.id, ev.events,
       pg_notify('talon_session_events',
                 s.namespace || '/' || s.id || ' ' || s.uid::text || ' ' || ev.events),
       pg_notify('talon_outbox', 'dispatch ' || o.id || ' ' || o.payload::text)
FROM s, o, ev
"""

START_EVENTS = json.dumps([
    ["turn.started", {"attempt": 1, "resumed": False}],
    ["step.started", {"step": "load-knowledge", "index": 0, "kind": "knowledge"}],
    ["step.completed", {"step": "load-knowledge", "index": 0, "kind": "knowledge",
                        "documents": []}],
    ["step.started", {"step": "call-model", "index": 1, "kind": "model"}],
])  # fmt: skip

CLAIM = f"""
WITH d AS (
    UPDATE outbox SET attempts = 1, claimed_until = now() + interval '30 seconds',
                      claimed_by = $2
    WHERE id = $3 AND attempts = 0 AND claimed_by IS NULL RETURNING 1
), s AS (
    SELECT uid, namespace, id, agent FROM sessions
    WHERE uid = $1 AND EXISTS (SELECT 1 FROM d) FOR UPDATE
), head AS (
    SELECT t.id, t.attempts,
           t.state = 'running' AND t.lease_expires_at > now()
           AND NOT pg_try_advisory_xact_lock_shared(hashtext(t.lease_owner)) AS leased
    FROM turns t JOIN s ON t.session_uid = s.uid
    WHERE t.state IN ('queued', 'running') ORDER BY t.seq LIMIT 1 FOR UPDATE OF t
), c AS (
    UPDATE turns SET state = 'running', fencing_token = fencing_token + 1, lease_owner = $2,
                     lease_expires_at = now() + interval '30 seconds',
                     attempts = turns.attempts + 1, started_at = COALESCE(started_at, now())
    FROM head WHERE turns.id = head.id AND NOT head.leased AND head.attempts < 5
    RETURNING turns.id, turns.fencing_token, turns.attempts
), go AS (
    SELECT c.id, c.fencing_token, s.uid FROM c, s,
        LATERAL (SELECT status FROM resources WHERE kind = 'Agent' AND namespace = s.namespace
                 AND name = s.agent LIMIT 1) r
    WHERE c.attempts = 1 AND r.status->>'phase' = 'Resolved'
      AND (SELECT 1 FROM resources k WHERE k.kind = 'Knowledge' AND k.namespace = s.namespace
           LIMIT 1) IS NULL
      AND (SELECT kc.idx FROM knowledge_chunks kc WHERE kc.namespace = s.namespace
           ORDER BY kc.document, kc.idx LIMIT 1) IS NULL
), st AS (
    INSERT INTO turn_steps (turn_id, idx, name, kind, state, output, fencing_token, completed_at)
    SELECT id, 0, 'load-knowledge', 'knowledge', 'completed',
           '{{"documents": [], "context": ""}}', fencing_token, now() FROM go
), es AS (
    UPDATE sessions SET last_event_id = last_event_id + 4, updated_at = now()
    FROM go WHERE sessions.uid = go.uid
    RETURNING sessions.uid, sessions.namespace, sessions.id, last_event_id, go.id AS turn_id
), ei AS (
    INSERT INTO session_events (session_uid, id, turn_id, type, data)
    SELECT es.uid, es.last_event_id - 4 + a.ord, es.turn_id, a.event->>0, a.event->1
    FROM es, jsonb_array_elements($4::jsonb) WITH ORDINALITY AS a(event, ord)
    RETURNING id, type, turn_id, data, created_at
), ej AS (
    SELECT {EVENTS_JSON.format(e="ei")} AS events FROM ei
)
SELECT c.fencing_token, c.attempts, es.uid IS NOT NULL AS started,
       pg_notify('talon_session_events',
                 es.namespace || '/' || es.id || ' ' || es.uid::text || ' ' || ej.events)
FROM c LEFT JOIN es ON true LEFT JOIN ej ON true
"""

# What the worker's copy of the window lacks (the messages after the last one it has), and
# where the window of the leased turn starts (its first turn's input), so the copy can drop
# what left it.
WINDOW = f"""
WITH h AS (SELECT max(seq) AS seq FROM turns WHERE lease_owner = $2 AND session_uid = $1
           AND state = 'running')
SELECT (SELECT input_seq FROM turns WHERE session_uid = $1
        AND seq >= (SELECT seq FROM h) - {HISTORY_TURNS} ORDER BY seq LIMIT 1) AS lo,
       (SELECT coalesce(json_agg(json_build_array(seq, role, content) ORDER BY seq), '[]')::text
        FROM messages WHERE session_uid = $1 AND seq > $3) AS messages
"""

FINAL = f"""
WITH lk AS (
    SELECT uid, id FROM sessions WHERE uid = $1 FOR UPDATE
), done AS (
    UPDATE turns SET state = 'completed', finished_at = now(), provider = $5,
                     lease_owner = NULL, lease_expires_at = NULL
    FROM lk WHERE turns.id = $2 AND turns.session_uid = lk.uid AND fencing_token = $3
      AND state = 'running'
    RETURNING turns.id, turns.seq
), ms AS (
    INSERT INTO turn_steps (turn_id, idx, name, kind, state, output, fencing_token, completed_at)
    SELECT id, 1, 'call-model', 'model', 'completed', $6::jsonb, $3, now() FROM done
    UNION ALL
    SELECT id, 2, 'write-next-message', 'write', 'completed', '{{"messages": 1}}', $3, now()
    FROM done
), u AS (
    INSERT INTO model_usage (turn_id, idx, namespace, agent, session_id, session_uid, turn_seq,
                             profile, provider, model, prompt_tokens, completion_tokens)
    SELECT done.id, 1, 'bench', 'bot', lk.id, $1, done.seq, 'zero', 'openai', 'zero-latency',
           12, 1
    FROM done, lk
), cs AS (
    UPDATE sessions SET last_message = last_message + 1, last_event_id = last_event_id + 6,
                        updated_at = now()
    FROM done WHERE sessions.uid = $1
    RETURNING sessions.uid, sessions.namespace, sessions.id, last_message, last_event_id,
              last_turn - done.seq AS open, done.id AS turn_id
), m AS (
    INSERT INTO messages (session_uid, seq, role, content, turn_id)
    SELECT uid, last_message, 'assistant', $4, turn_id FROM cs
), ei AS (
    INSERT INTO session_events (session_uid, id, turn_id, type, data)
    SELECT cs.uid, cs.last_event_id - 6 + a.ord, cs.turn_id, a.event->>0,
           (a.event->1) || CASE a.event->>0
               WHEN 'message.created' THEN jsonb_build_object('seq', cs.last_message)
               WHEN 'turn.completed' THEN jsonb_build_object('openTurns', cs.open)
               ELSE '{{}}'::jsonb END
    FROM cs, jsonb_array_elements($7::jsonb) WITH ORDINALITY AS a(event, ord)
    RETURNING id, type, turn_id, data, created_at
), ej AS (
    SELECT {EVENTS_JSON.format(e="ei")} AS events FROM ei
), ack AS (
    DELETE FROM outbox WHERE id = $8 AND EXISTS (SELECT 1 FROM cs WHERE open = 0)
)
SELECT cs.open, pg_notify('talon_session_events',
                          cs.namespace || '/' || cs.id || ' ' || cs.uid::text || ' ' || ej.events)
FROM cs, ej
"""

# Deployed, Pub/Sub delivers the dispatch row (published by the gateway) and takes its
# acknowledgement: the claim does not claim it, the final write does not remove it.
_DELIVERY_CLAIM = """d AS (
    UPDATE outbox SET attempts = 1, claimed_until = now() + interval '30 seconds',
                      claimed_by = $2
    WHERE id = $3 AND attempts = 0 AND claimed_by IS NULL RETURNING 1
), """
_ACK = """, ack AS (
    DELETE FROM outbox WHERE id = $8 AND EXISTS (SELECT 1 FROM cs WHERE open = 0)
)"""
CLAIM_PUSHED = (
    CLAIM.replace(_DELIVERY_CLAIM, "")
    .replace(" AND EXISTS (SELECT 1 FROM d)", "")
    .replace("$4::jsonb", "$3::jsonb")
)
FINAL_PUSHED = FINAL.replace(_ACK, "")


def final_events(answer: str) -> str:
    usage = {"promptTokens": 12, "completionTokens": 1}
    model = {"step": "call-model", "index": 1, "kind": "model",
             "provider": "zero/openai:zero-latency", "toolCalls": [], "usage": usage}  # fmt: skip
    write = {"step": "write-next-message", "index": 2, "kind": "write"}
    return json.dumps([
        ["step.completed", model],
        ["message.delta", {"text": answer}],
        ["step.started", write],
        ["message.created", {"role": "assistant", "content": answer}],
        ["step.completed", write],
        ["turn.completed", {"provider": "zero/openai:zero-latency"}],
    ])  # fmt: skip


class Shared:
    """A connection that several clients' threads take turns on, a round trip at a time."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.lock = threading.Lock()

    def run(self, work: list[tuple[str, Any]], *, commit: bool = True) -> list[Any]:
        with self.lock:
            return statements.run_batch(self.connection, work, commit=commit)


class Client:
    """One session and what drives it: a gateway's and a worker's connection (shared with
    other clients under `--connections`), the worker's copy of the session's messages (what
    the window read adds to) and, as deployed (`--push`), the dispatch rows published so
    far."""

    def __init__(self, gateway: Shared, worker: Shared, session_id: str, push: bool) -> None:
        self.gateway, self.worker = gateway, worker
        self.session = uuid.uuid4()
        self.session_id = session_id
        self.last = 0
        self.published: list[int] | None = [] if push else None


def one_turn(client: Client, n: int, think: float = 0.0) -> None:
    """One turn, pausing `think` seconds before each round trip."""
    gateway, worker, session = client.gateway, client.worker, client.session
    published = client.published
    turn = uuid.uuid4()
    text = f"turn {n}"
    time.sleep(think)
    [posted] = gateway.run(
        [(MESSAGE, ("bench", client.session_id, "bot", turn, f"key-{turn}", turn.bytes, text))]
    )
    assert posted.rows, "the message queued nothing"
    delivery = posted.rows[0][2]
    claiming = (CLAIM, (session, WORKER, delivery, START_EVENTS))
    if published is not None:
        published.append(delivery)
        claiming = (CLAIM_PUSHED, (session, WORKER, START_EVENTS))
    time.sleep(think)
    claimed, window = worker.run([claiming, (WINDOW, (session, WORKER, client.last))])
    fencing, attempts, started, _ = claimed.rows[0]
    assert attempts == 1 and started, claimed.rows
    messages = json.loads(window.rows[0][1])
    assert messages[-1][2] == text, messages
    client.last = messages[-1][0] + 1  # and the answer below
    answer = "ok"
    output = json.dumps({"content": answer, "provider": "zero/openai:zero-latency",
                         "usage": {"promptTokens": 12, "completionTokens": 1}})  # fmt: skip
    params = (session, turn, fencing, answer, "zero/openai:zero-latency", output,
              final_events(answer))  # fmt: skip
    final_sql = FINAL if published is None else FINAL_PUSHED
    time.sleep(think)
    [final] = worker.run([(final_sql, params + (() if published is not None else (delivery,)))])
    assert final.rows and final.rows[0][0] == 0, final.rows
    if published is not None and len(published) >= 64:
        gateway.run([(PUBLISHED, (published[:],))])
        published.clear()


def measure(
    turns: int,
    push: bool = False,
    clients: int = 1,
    think_ms: float = 0.0,
    connections: int | None = None,
) -> dict[str, Any]:
    """The contract floor's figures for `turns` turns (rounded down to a multiple of
    `clients`), `clients` sessions at once over `connections` pairs of a gateway's and a
    worker's connection (default: a pair each), pausing `think_ms` before each round trip."""
    per_client = turns // clients
    turns = per_client * clients
    pairs = min(connections or clients, clients)
    with migrated_cluster("talon-pg-contract-") as pg:
        # Deployed, only the gateways listen (for session events).
        channels = ["talon_session_events"] if push else ["talon_outbox", "talon_session_events"]
        woken = listening(pg, channels)
        gateways = [Shared(pg.connect("talon")) for _ in range(pairs)]
        workers = [Shared(pg.connect("talon")) for _ in range(pairs)]
        driven = [Client(gateways[n % pairs], workers[n % pairs], f"c{n}", push)
                  for n in range(clients)]  # fmt: skip
        gateways[0].run([
            ("INSERT INTO resources (kind, namespace, name, uid, resource_version, body, status) "
             "VALUES ('Agent', 'bench', 'bot', $1, 1, '{}', '{\"phase\": \"Resolved\"}')",
             (uuid.uuid4(),)),
            *[("INSERT INTO sessions (uid, namespace, id, agent) VALUES ($1, 'bench', $2, 'bot')",
               (client.session, client.session_id)) for client in driven],
        ])  # fmt: skip
        for client in driven:
            for n in range(2 * HISTORY_TURNS):  # warm: a full window, prepared statements
                one_turn(client, n)
        woken = listening_afresh(pg, woken, channels)
        time.sleep(11)  # backends report their commit counts when idle for 10 s
        commits_before = commits(pg)
        wal_before = wal_position(pg)
        cpu_before = cpu_by_process(pg)
        failures: list[BaseException] = []

        def drive(client: Client) -> None:
            try:
                for n in range(per_client):
                    one_turn(client, n, think_ms / 1000)
            except BaseException as exc:  # reported below, not lost in the thread
                failures.append(exc)

        threads = [threading.Thread(target=drive, args=(client,)) for client in driven]
        own_before = time.process_time()  # this process: pg8000 and the threads driving it
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        cpu = cpu_since(pg, cpu_before)
        own = time.process_time() - own_before
        if failures:
            raise failures[0]
        # What the turns left, per turn (every turn of the session: the warm-up's too).
        [counted] = workers[0].run([(
            "SELECT (SELECT count(*) FROM session_events)::float / count(*), "
            "(SELECT count(*) FROM turn_steps)::float / count(*), "
            "(SELECT count(*) FROM model_usage)::float / count(*), "
            "(SELECT count(*) FROM messages)::float / count(*), "
            "(SELECT count(*) FROM outbox), count(*) FILTER (WHERE state <> 'completed') "
            "FROM turns", ())], commit=False)  # fmt: skip
        for shared in gateways + workers:
            shared.connection.close()
        for listener in woken:
            listener.close()
        time.sleep(1)
        wal_after = wal_position(pg)
        return {
            "turns": turns,
            "clients": clients,
            "connection_pairs": pairs,
            "think_ms": think_ms,
            "push": push,
            "turns_per_second": round(turns / elapsed, 1),
            **per_turn(pg, turns, cpu, own, commits_before, (wal_before, wal_after)),
            "rows_per_turn": dict(zip(
                ["events", "steps", "usage", "messages", "outbox left", "open turns left"],
                counted.rows[0], strict=True)),
        }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=3000)
    parser.add_argument(
        "--push", action="store_true", help="the deployed topology's (Pub/Sub push)"
    )
    parser.add_argument(
        "--clients", type=int, default=1, help="sessions driven at once, a thread each"
    )
    parser.add_argument(
        "--think-ms", type=float, default=0.0, help="pause before each of a turn's round trips"
    )
    parser.add_argument("--connections", type=int, default=None,
                        help="pairs of a gateway's and a worker's connection the clients "
                        "share, a round trip at a time (default: a pair each)")  # fmt: skip
    args = parser.parse_args()
    if (
        args.clients < 1
        or args.think_ms < 0
        or (args.connections is not None and args.connections < 1)
    ):
        parser.error("--clients and --connections must be at least 1, --think-ms not negative")
    print(json.dumps(measure(args.turns, args.push, args.clients, args.think_ms,
                             args.connections), indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
