"""What migration 0018 keeps while a turn no longer pays for it on every statement: value
lists as domains instead of CHECK constraints, and a turn's steps tied to it by the writers'
locks and a delete trigger instead of a foreign key."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pg8000.dbapi
import pytest

from conftest import Cluster
from talon.runtime.journal import Lease
from talon.store import turn_steps
from talon.store.connect import connector_from_url
from talon.store.database import Database
from talon.store.migrate import migration_files
from talon.store.turn_steps import Step

# The tables every turn writes: a foreign key here is a trigger per row, a CHECK constraint
# an expression read back from its text and planned per statement.
TURN_TABLES = ("sessions", "messages", "turns", "turn_steps", "session_events", "outbox")


def _running_turn(db: Database) -> Lease:
    """A session with one running turn leased to worker `w`, fencing token 1."""
    session, turn = uuid.uuid4(), uuid.uuid4()
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO sessions (uid, namespace, id, agent, last_message, last_turn) "
            "VALUES (%s, 'acme', %s, 'bot', 1, 1)",
            (session, f"s-{session.hex[:8]}"),
        )
        tx.execute(
            "INSERT INTO messages (session_uid, seq, role, content) VALUES (%s, 1, 'user', 'hi')",
            (session,),
        )
        tx.execute(
            "INSERT INTO turns (id, session_uid, seq, input_seq, state, fencing_token, "
            "lease_owner, lease_expires_at, attempts) "
            "VALUES (%s, %s, 1, 1, 'running', 1, 'w', now() + interval '30 seconds', 1)",
            (turn, session),
        )
    return Lease(turn, session, 1, 30.0)


def _step(idx: int) -> Step:
    return Step(idx, f"step-{idx}", "model", "completed", {"n": idx})


def _steps(db: Database, turn_id: uuid.UUID) -> int:
    with db.transaction() as tx:
        return int(tx.scalar("SELECT count(*) FROM turn_steps WHERE turn_id = %s", (turn_id,)))


def test_the_tables_a_turn_writes_have_no_foreign_keys_or_check_constraints(db: Database) -> None:
    with db.transaction() as tx:
        rows = tx.all(
            "SELECT conrelid::regclass::text AS tab, conname FROM pg_constraint "
            "WHERE contype IN ('f', 'c') AND conrelid::regclass::text = ANY(%s)",
            (list(TURN_TABLES),),
        )
    assert rows == []


def test_the_migration_rewrites_no_table_and_keeps_the_rows(cluster: Cluster) -> None:
    """0018 on a database in service: the columns change type in place (only turns' partial
    indexes, which hold the open turns, are built again), and every row is still there."""
    name = f"talon_0018_{uuid.uuid4().hex[:8]}"
    url = cluster.create(name)
    connection = connector_from_url(url, 10)()
    try:
        files = dict(migration_files())
        for version in sorted(files):
            if version.startswith("0018"):
                break
            connection.execute_simple(files[version])
        db = Database(connector_from_url(url, 10), 1)
        lease = _running_turn(db)
        with db.transaction() as tx:
            assert turn_steps.renew_and_write(tx, lease, _step(0))
        db.close()
        relations = ["messages", "turns", "turn_steps", "turns_pkey", "messages_pkey"]
        files_before = _relfilenodes(connection, relations)

        connection.execute_simple(files["0018_integrity_checks_paid_once"])

        assert _relfilenodes(connection, relations) == files_before
        cursor = connection.cursor()
        cursor.execute(
            "SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM turns), "
            "(SELECT count(*) FROM turn_steps), (SELECT state FROM turns)"
        )
        assert list(cursor.fetchall()) == [[1, 1, 1, "running"]]
    finally:
        connection.close()
        cluster.drop(name)


def _relfilenodes(connection: Any, relations: list[str]) -> dict[str, int]:
    cursor = connection.cursor()
    cursor.execute(
        "SELECT relname, relfilenode FROM pg_class WHERE relname = ANY(%s)", (relations,)
    )
    return dict(cursor.fetchall())


@pytest.mark.parametrize(
    ("sql", "constraint"),
    [
        ("UPDATE messages SET role = 'robot' WHERE session_uid = %s", "talon_message_role_check"),
        ("UPDATE turns SET state = 'paused' WHERE session_uid = %s", "talon_turn_state_check"),
        (
            "INSERT INTO turn_steps (turn_id, idx, name, kind, state, output, fencing_token) "
            "SELECT id, 9, 'x', 'model', 'done', '{}', 1 FROM turns WHERE session_uid = %s",
            "talon_step_state_check",
        ),
    ],
)
def test_a_value_outside_its_list_is_refused(db: Database, sql: str, constraint: str) -> None:
    lease = _running_turn(db)
    with pytest.raises(pg8000.dbapi.DatabaseError, match=constraint), db.transaction() as tx:
        tx.execute(sql, (lease.session_uid,))


def test_every_value_in_the_lists_is_accepted(db: Database) -> None:
    lease = _running_turn(db)
    with db.transaction() as tx:
        for role in ("user", "assistant", "tool", "system"):
            tx.execute("UPDATE messages SET role = %s WHERE session_uid = %s",
                       (role, lease.session_uid))  # fmt: skip
        for state in ("queued", "completed", "failed", "cancelled", "running"):
            tx.execute("UPDATE turns SET state = %s WHERE id = %s", (state, lease.turn_id))
        for idx, state in enumerate(("started", "completed", "failed")):
            tx.execute(
                "INSERT INTO turn_steps (turn_id, idx, name, kind, state, output, fencing_token) "
                "VALUES (%s, %s, 'x', 'model', %s, '{}', 1)",
                (lease.turn_id, idx, state),
            )
    assert _steps(db, lease.turn_id) == 3


def test_deleting_a_turn_deletes_its_steps_and_no_others(db: Database) -> None:
    doomed, kept = _running_turn(db), _running_turn(db)
    for lease in (doomed, kept):
        with db.transaction() as tx:
            for idx in (0, 1):
                assert turn_steps.renew_and_write(tx, lease, _step(idx))

    with db.transaction() as tx:
        tx.execute("DELETE FROM turns WHERE id = ANY(%s)", ([doomed.turn_id],))

    assert (_steps(db, doomed.turn_id), _steps(db, kept.turn_id)) == (0, 2)


def test_a_step_journaled_while_its_session_is_deleted_leaves_nothing_behind(
    db: Database,
) -> None:
    """The step's transaction holds the session's lock (its renewal took it), so the deletion
    waits for its commit and then deletes the step with the turn."""
    lease = _running_turn(db)
    deleted: list[Any] = []

    def delete() -> None:
        with db.transaction() as tx:
            tx.execute("DELETE FROM sessions WHERE uid = %s", (lease.session_uid,))
            deleted.append(True)

    with db.transaction() as tx:
        assert turn_steps.renew_and_write(tx, lease, _step(0))
        deleting = threading.Thread(target=delete)
        deleting.start()
        assert _waiting_for_a_lock(db)
        assert not deleted
    deleting.join(10)

    assert deleted == [True]
    assert _steps(db, lease.turn_id) == 0


def _waiting_for_a_lock(db: Database) -> bool:
    """Whether a DELETE waits for a lock, within 10 s."""
    for _ in range(500):
        with db.transaction() as look:
            if look.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE %s",
                ("DELETE FROM sessions%",),
            ):
                return True
        threading.Event().wait(0.02)
    return False


def test_truncating_the_turns_truncates_their_steps(db: Database) -> None:
    lease = _running_turn(db)
    with db.transaction() as tx:
        assert turn_steps.renew_and_write(tx, lease, _step(0))
        tx.execute("TRUNCATE turns")
    with db.transaction() as tx:
        assert tx.scalar("SELECT count(*) FROM turn_steps") == 0


def test_a_step_for_a_deleted_sessions_turn_is_not_written(db: Database) -> None:
    lease = _running_turn(db)
    with db.transaction() as tx:
        tx.execute("DELETE FROM sessions WHERE uid = %s", (lease.session_uid,))
    with db.transaction() as tx:
        assert not turn_steps.renew_and_write(tx, lease, _step(0))
    assert _steps(db, lease.turn_id) == 0


def test_the_open_turns_index_still_answers_for_the_state_domain(db: Database) -> None:
    """Its predicate names the state, now a domain over text: a query for a session's open
    turns still matches it (generic plan, sequential scans priced out)."""
    with db.transaction() as tx:
        tx.execute("SET LOCAL enable_seqscan = off")
        tx.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        plan = "\n".join(
            row["QUERY PLAN"]
            for row in tx.all(
                "EXPLAIN SELECT id FROM turns WHERE session_uid = %s "
                "AND state IN ('queued', 'running') ORDER BY seq",
                (uuid.uuid4(),),
            )
        )
    assert "turns_open" in plan, plan
