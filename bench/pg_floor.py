"""Benchmark: the database floor under a turn — what PostgreSQL spends per turn on the fewest
statements that keep Talon's durability contract, on Talon's own schema, with no Talon code.

Each turn is four round trips, one statement each, as few as the contract allows:
- the message: the session's counters, the user message, the turn and its event, the
  dispatch row of the PostgreSQL broker and the worker's notification, committed (fsync)
  before it is acknowledged;
- the stream's start: the session's events after a position (one read);
- the claim: the turn's lease, the dispatch row's claim, the turn's start event and
  notification, committed, with the history window in the same round trip (as a worker
  with a copy of the window reads it: the messages it lacks, here the new one);
- the final write: the answer, the model step's journal row, the turn's completion, its
  events, the dispatch row's removal and the notification, committed.
Two connections LISTEN as the gateway's and the worker's do, so PostgreSQL wakes them for
every notification (`--listeners`). There is no idempotency key, no check that the delivery
was not taken, no fencing check on the claim, no knowledge step, no event payloads in the
notifications: each is something Talon does on top, so PostgreSQL's CPU per turn here is
below what a Talon turn can cost on this schema. `--bare`: three one-row durable commits
with a notification each, what the commits alone cost. `--push`: the deployed topology's
floor (Pub/Sub push, a message posted for its events): no stream read, no claim or removal of
the dispatch row by the worker (their statements find no row), the published rows deleted
64 at a time in a transaction of their own, and one listener (the gateway's).

    .venv/bin/python bench/pg_floor.py --turns 3000
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from turns import commits, cpu_seconds, postgres_pids, wal_position

from talon.store import statements
from talon.store.connect import connector_from_url
from talon.store.database import Database
from talon.store.local_postgres import LocalPostgres
from talon.store.migrate import migrate
from talon.store.notify import Listener

HISTORY = 80

MESSAGE = """
WITH s AS (
    UPDATE sessions SET last_message = last_message + 1, last_turn = last_turn + 1,
                        last_event_id = last_event_id + 1, updated_at = now()
    WHERE uid = $1 RETURNING last_message, last_turn, last_event_id
), m AS (
    INSERT INTO messages (session_uid, seq, role, content, turn_id)
    SELECT $1, last_message, 'user', $2, $3 FROM s
), t AS (
    INSERT INTO turns (id, session_uid, seq, input_seq)
    SELECT $3, $1, last_turn, last_message FROM s
), e AS (
    INSERT INTO session_events (session_uid, id, turn_id, type, data)
    SELECT $1, last_event_id, $3, 'message.created', '{}' FROM s
), o AS (
    INSERT INTO outbox (topic, key, payload) SELECT 'dispatch', $1::text, '{}' FROM s RETURNING id
)
SELECT last_event_id, o.id, last_message, pg_notify('talon_outbox', $3::text) FROM s, o
"""

STREAM = """
SELECT id, type, data::text FROM session_events WHERE session_uid = $1 AND id > $2 ORDER BY id
"""

CLAIM = """
WITH c AS (
    UPDATE turns SET state = 'running', attempts = attempts + 1,
                     fencing_token = fencing_token + 1, lease_owner = $2,
                     lease_expires_at = now() + interval '30 seconds', started_at = now()
    WHERE id = $1 AND state = 'queued' RETURNING session_uid, fencing_token
), s AS (
    UPDATE sessions SET last_event_id = last_event_id + 1
    WHERE uid = (SELECT session_uid FROM c) RETURNING uid, last_event_id
), e AS (
    INSERT INTO session_events (session_uid, id, turn_id, type, data)
    SELECT uid, last_event_id, $1, 'turn.started', '{}' FROM s
), o AS (
    UPDATE outbox SET attempts = 1, claimed_until = now() + interval '30 seconds', claimed_by = $2
    WHERE id = $3
)
SELECT c.fencing_token, pg_notify('talon_session_events', $1::text) FROM c, s
"""

# The history window as a worker with a copy of it reads it (`runtime/history_cache.py`): the
# messages after the last one its copy has, the session's counter at the previous claim (the
# previous turn's answer and the new input), at most a window's worth. Talon's read also
# returns the window's turn ids and the session's counter; this one does not.
WINDOW = f"""
SELECT coalesce(json_agg(json_build_array(role, content) ORDER BY seq), '[]')::text FROM (
    SELECT seq, role, content FROM messages WHERE session_uid = $1 AND seq > $2
    ORDER BY seq DESC LIMIT {HISTORY}
) w
"""

COMPLETE = """
WITH s AS (
    UPDATE sessions SET last_message = last_message + 1, last_event_id = last_event_id + 2,
                        updated_at = now()
    WHERE uid = $1 RETURNING last_message, last_event_id
), m AS (
    INSERT INTO messages (session_uid, seq, role, content, turn_id)
    SELECT $1, last_message, 'assistant', $3, $2 FROM s
), j AS (
    INSERT INTO turn_steps (turn_id, idx, name, kind, state, output, fencing_token, completed_at)
    VALUES ($2, 0, 'call-model', 'model', 'completed', '{}', $4, now())
), t AS (
    UPDATE turns SET state = 'completed', finished_at = now(), lease_owner = NULL
    WHERE id = $2 AND fencing_token = $4
), e AS (
    INSERT INTO session_events (session_uid, id, turn_id, type, data)
    SELECT $1, last_event_id - 1, $2, 'message.created', '{}'::jsonb FROM s
    UNION ALL SELECT $1, last_event_id, $2, 'turn.completed', '{}'::jsonb FROM s
), o AS (
    DELETE FROM outbox WHERE id = $5
)
SELECT pg_notify('talon_session_events', $2::text) FROM s
"""


BARE = "INSERT INTO bare (turn, n) VALUES ($1, $2)"
BARE_NOTIFY = "SELECT pg_notify($1, $2::text)"


def bare_turn(connection: Any, session: uuid.UUID, n: int) -> None:
    """Three durable commits of one row each with a notification, nothing else: what the
    commits alone cost (`--bare`)."""
    turn = uuid.uuid4()
    channels = ("talon_outbox", "talon_session_events", "talon_session_events")
    for step, channel in enumerate(channels):
        statements.run_batch(connection, [(BARE, (turn, step)), (BARE_NOTIFY, (channel, turn))],
                             commit=True)  # fmt: skip


def one_turn(connection: Any, session: uuid.UUID, n: int) -> None:
    turn = uuid.uuid4()
    [posted] = statements.run_batch(connection, [(MESSAGE, (session, f"turn {n}", turn))],
                                    commit=True)  # fmt: skip
    after, delivery, message = posted.rows[0][0] - 1, posted.rows[0][1], posted.rows[0][2]
    connection.autocommit = True
    statements.run_batch(connection, [(STREAM, (session, after))])
    connection.autocommit = False
    claimed, window = statements.run_batch(
        connection,
        [(CLAIM, (turn, "worker-1", delivery)), (WINDOW, (session, message - 2))],
        commit=True,
    )
    fencing = claimed.rows[0][0]
    _check_window(window.rows[0][0], n)
    statements.run_batch(
        connection, [(COMPLETE, (session, turn, "ok", fencing, delivery))], commit=True
    )


PUBLISHED = "DELETE FROM outbox WHERE id = ANY($1::bigint[])"
_published: list[int] = []


def _check_window(window: str, n: int) -> None:
    """The window read the messages a worker's copy lacks: the previous answer (none before
    the first turn) and the new input, no more."""
    rows = json.loads(window)
    assert rows[-1] == ["user", f"turn {n}"] and rows[:-1] in ([], [["assistant", "ok"]]), rows


def push_turn(connection: Any, session: uuid.UUID, n: int) -> None:
    """`one_turn` as deployed: the dispatch row goes to Pub/Sub, and the relay deletes the
    rows it published in batches (`broker/relay.py`)."""
    turn = uuid.uuid4()
    [posted] = statements.run_batch(connection, [(MESSAGE, (session, f"turn {n}", turn))],
                                    commit=True)  # fmt: skip
    _published.append(posted.rows[0][1])
    message = posted.rows[0][2]
    no_row = -1
    claimed, window = statements.run_batch(
        connection,
        [(CLAIM, (turn, "worker-1", no_row)), (WINDOW, (session, message - 2))],
        commit=True,
    )
    fencing = claimed.rows[0][0]
    _check_window(window.rows[0][0], n)
    statements.run_batch(
        connection, [(COMPLETE, (session, turn, "ok", fencing, no_row))], commit=True
    )
    if len(_published) >= 64:
        statements.run_batch(connection, [(PUBLISHED, (_published[:],))], commit=True)
        _published.clear()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=3000)
    parser.add_argument("--listeners", type=int, choices=(0, 1, 2),
                        help="connections that LISTEN (default: 2, or 1 with --push)")  # fmt: skip
    parser.add_argument("--push", action="store_true",
                        help="the deployed topology's floor (Pub/Sub push)")  # fmt: skip
    parser.add_argument(
        "--bare",
        action="store_true",
        help="three one-row durable commits with a notification each, no more",
    )
    args = parser.parse_args()
    shape = "bare" if args.bare else "push" if args.push else "turn"
    print(json.dumps(measure(args.turns, shape, args.listeners), indent=2))
    return 0


@contextmanager
def migrated_cluster(prefix: str) -> Iterator[LocalPostgres]:
    """A fresh durable cluster with Talon's schema in its database `talon`, stopped and
    removed after."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    pg = LocalPostgres(root / "pg", durable=True)
    pg.start()
    try:
        pg.ensure_database("talon")
        migrate(Database(connector_from_url(pg.url("talon"), 10), 1))
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def listening(pg: LocalPostgres, channels: Sequence[str]) -> list[Listener]:
    """A connection LISTENing on each channel, as a gateway's or a worker's does, ready."""
    listeners = [Listener(lambda: pg.connect("talon"), (channel,)) for channel in channels]
    for listener in listeners:
        listener.wait_ready()
    return listeners


def listening_afresh(
    pg: LocalPostgres, woken: list[Listener], channels: Sequence[str]
) -> list[Listener]:
    """Close `woken` and listen again: a listening backend reports its commits (one for each
    wake-up) only when it exits, so the warm-up's are counted now rather than in the run."""
    for listener in woken:
        listener.close()
    return listening(pg, channels)


def cpu_by_process(pg: LocalPostgres) -> dict[int, float]:
    """Each PostgreSQL process's CPU seconds so far."""
    return {pid: cpu_seconds([pid]) for pid in postgres_pids(pg)}


def cpu_since(pg: LocalPostgres, before: dict[int, float]) -> float:
    """PostgreSQL's CPU seconds since `before` (`cpu_by_process`), process by process: one
    started since counts from zero, one gone since (a script's own query) is left out."""
    return sum(cpu_seconds([pid]) - before.get(pid, 0.0) for pid in postgres_pids(pg))


def per_turn(
    pg: LocalPostgres,
    turns: int,
    cpu: float,
    own: float,
    commits_before: int,
    wal: tuple[tuple[int, int], tuple[int, int]],
) -> dict[str, float]:
    """A floor's figures per turn: PostgreSQL's CPU (`cpu` seconds), this process's (`own`:
    pg8000 and Talon's statement layer sending the statements and reading their answers, and
    the listeners' threads reading the notifications), the commits since `commits_before`
    and the WAL between the two `wal_position` readings."""
    (bytes_before, syncs_before), (bytes_after, syncs_after) = wal
    return {
        "postgres_cpu_ms_per_turn": round(cpu * 1000 / turns, 2),
        "client_cpu_ms_per_turn": round(own * 1000 / turns, 2),
        # Minus the script's own queries: the count before the run and the two WAL reads.
        "commits_per_turn_all_processes": round((commits(pg) - commits_before - 3) / turns, 1),
        "wal_bytes_per_turn": round((bytes_after - bytes_before) / turns),
        "wal_syncs_per_turn": round((syncs_after - syncs_before) / turns, 2),
    }


def measure(turns: int, shape: str = "turn", listeners: int | None = None) -> dict[str, Any]:
    """The floor's figures for `turns` turns of `shape` (turn, push or bare) on a fresh
    durable cluster, with `listeners` connections LISTENing (default: 2, or 1 for push)."""
    turn = {"bare": bare_turn, "push": push_turn, "turn": one_turn}[shape]
    _published.clear()  # a previous call's, on a cluster gone since
    if listeners is None:
        listeners = 1 if shape == "push" else 2
    with migrated_cluster("talon-pg-floor-") as pg:
        # Deployed, only the gateways listen (for session events).
        channels = ("talon_outbox", "talon_session_events")
        if shape == "push":
            channels = ("talon_session_events",)
        channels = channels[:listeners]
        woken = listening(pg, channels)
        connection = pg.connect("talon")
        session = uuid.uuid4()
        statements.run_batch(connection, [(
            "CREATE TABLE bare (turn uuid, n int, at timestamptz DEFAULT now())", ())],
            commit=True)  # fmt: skip
        statements.run_batch(
            connection,
            [("INSERT INTO sessions (uid, namespace, id, agent) VALUES ($1, 'bench', 'c0', 'bot')",
              (session,))],
            commit=True,
        )  # fmt: skip
        for n in range(HISTORY):  # warm: a full history window, prepared statements
            turn(connection, session, n)
        woken = listening_afresh(pg, woken, channels)
        time.sleep(11)  # backends report their commit counts when idle for 10 s
        commits_before = commits(pg)
        wal_before = wal_position(pg)
        cpu_before = cpu_by_process(pg)
        own_before = time.process_time()
        started = time.perf_counter()
        for n in range(turns):
            turn(connection, session, n)
        elapsed = time.perf_counter() - started
        cpu = cpu_since(pg, cpu_before)
        own = time.process_time() - own_before
        connection.close()
        for listener in woken:
            listener.close()
        time.sleep(1)  # the closed backends' statistics
        wal_after = wal_position(pg)  # its flushes as the closed backends reported them
        return {
            "turns": turns,
            "shape": shape,
            "listeners": listeners,
            "turns_per_second": round(turns / elapsed, 1),
            "turn_ms": round(elapsed * 1000 / turns, 2),
            **per_turn(pg, turns, cpu, own, commits_before, (wal_before, wal_after)),
        }  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
