"""The PostgreSQL adapter: migrations under an advisory lock, transactions, the pool."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pg8000.dbapi
import pytest

from conftest import ROOT, Cluster
from talon.errors import Conflict, TalonError, Unavailable
from talon.store.connect import connector_from_url
from talon.store.database import Database, RollbackOnly
from talon.store.migrate import migrate, migration_files


@pytest.fixture
def blank_url(cluster: Cluster) -> str:
    url = cluster.create("talon_blank_migrations")
    yield url
    cluster.drop("talon_blank_migrations")


def test_concurrent_migrations_apply_each_file_once(blank_url: str) -> None:
    databases = [Database(connector_from_url(blank_url, 10), 1) for _ in range(4)]
    start = threading.Barrier(len(databases))
    applied: list[list[str]] = []
    errors: list[BaseException] = []

    def run(db: Database) -> None:
        start.wait()
        try:
            applied.append(migrate(db))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(db,)) for db in databases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    versions = [version for version, _ in migration_files()]
    # Exactly one migrator applied everything; the others found nothing left to do.
    assert sorted(applied, key=len) == [[], [], [], versions]
    with databases[0].transaction() as tx:
        rows = tx.all("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == versions
        assert tx.scalar("SELECT count(*) FROM resources") == 0
    assert migrate(databases[0]) == []
    for db in databases:
        db.close()


# Applies the migrations to argv[1] and SIGKILLs itself when migration argv[2] has run its SQL
# and written its row, just before their commit: the worst moment for a crash.
_CRASHING_MIGRATOR = """
import os, signal, sys
from talon.store.connect import connector_from_url
from talon.store.database import Database
from talon.store.migrate import migrate

def die(version):
    if version == sys.argv[2]:
        os.kill(os.getpid(), signal.SIGKILL)

migrate(Database(connector_from_url(sys.argv[1], 10), 1), before_commit=die)
"""


def test_a_migrator_killed_before_its_commit_leaves_neither_ddl_nor_row(blank_url: str) -> None:
    versions = [version for version, _ in migration_files()]
    victim = "0002_sessions"  # many statements: tables, indexes, constraints
    assert victim in versions
    crashed = subprocess.run(
        [sys.executable, "-c", _CRASHING_MIGRATOR, blank_url, victim],
        cwd=ROOT, capture_output=True, timeout=120,
    )  # fmt: skip
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr.decode()
    db = Database(connector_from_url(blank_url, 10), 1)
    try:
        with db.transaction() as tx:
            rows = tx.all("SELECT version FROM schema_migrations ORDER BY version")
            assert [r["version"] for r in rows] == versions[: versions.index(victim)]
            assert tx.scalar("SELECT to_regclass('resources') IS NOT NULL")  # 0001 committed
            # Nothing of the killed file is left: not its tables, not its indexes.
            for relation in ("sessions", "messages", "turns", "sessions_by_agent"):
                assert tx.scalar("SELECT to_regclass(%s)", (relation,)) is None, relation
        # The next start applies the rest cleanly, the killed file included.
        assert migrate(db) == versions[versions.index(victim) :]
        with db.transaction() as tx:
            rows = tx.all("SELECT version FROM schema_migrations ORDER BY version")
            assert [r["version"] for r in rows] == versions
            assert tx.scalar("SELECT count(*) FROM sessions") == 0
    finally:
        db.close()


def test_transaction_rolls_back_on_error(db: Database) -> None:
    with pytest.raises(RuntimeError), db.transaction() as tx:
        tx.execute(
            "INSERT INTO resources (kind, namespace, name, uid, resource_version, body) "
            "VALUES ('Namespace', '', 'gone', gen_random_uuid(), 1, '{}')"
        )
        raise RuntimeError("boom")
    with db.transaction() as tx:
        assert tx.scalar("SELECT count(*) FROM resources WHERE name = 'gone'") == 0


def test_rollback_only_discards_without_error(db: Database) -> None:
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO resources (kind, namespace, name, uid, resource_version, body) "
            "VALUES ('Namespace', '', 'dry', gen_random_uuid(), 1, '{}')"
        )
        raise RollbackOnly
    with db.transaction() as tx:
        assert tx.scalar("SELECT count(*) FROM resources WHERE name = 'dry'") == 0


def test_unique_violation_becomes_conflict(db: Database) -> None:
    insert = (
        "INSERT INTO resources (kind, namespace, name, uid, resource_version, body) "
        "VALUES ('Namespace', '', 'dup', gen_random_uuid(), 1, '{}')"
    )
    with db.transaction() as tx:
        tx.execute(insert)
    with pytest.raises(Conflict), db.transaction() as tx:
        tx.execute(insert)
    # The connection that saw the error went back to the pool in a usable state.
    with db.transaction() as tx:
        assert tx.scalar("SELECT count(*) FROM resources WHERE name = 'dup'") == 1


def test_pool_reuses_connections(db: Database) -> None:
    pids = set()
    for _ in range(5):
        with db.transaction() as tx:
            pids.add(tx.scalar("SELECT pg_backend_pid()"))
    assert len(pids) == 1


def test_prepared_statements_keep_their_generic_plan(db: Database) -> None:
    """Connections ask for generic plans: a statement prepared once is planned once, not
    again at every execution (PostgreSQL's default when it guesses custom plans cheaper)."""
    with db.transaction() as tx:
        assert tx.scalar("SHOW plan_cache_mode") == "force_generic_plan"
        for _ in range(3):
            tx.one("SELECT count(*) AS n FROM sessions WHERE namespace = %s", ("acme",))
        plans = tx.one(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE 'SELECT count(*) AS n FROM sessions%%'"
        )
    assert plans == {"generic_plans": 3, "custom_plans": 0}


def test_tls_is_not_offered_on_this_machine_unless_sslmode_asks(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offering TLS builds an SSL context per connection (~17 ms of CPU): not for loopback
    servers. A server elsewhere is still offered TLS (pg8000's default)."""
    import ssl

    from talon.store import connect

    built: list[bool] = []
    real = ssl.create_default_context

    def counted(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        built.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counted)
    connection = connector_from_url(database_url, 10)()
    connection.close()
    assert built == []
    assert connect._is_loopback("127.0.0.1") and connect._is_loopback("::1")
    assert connect._is_loopback("localhost") and not connect._is_loopback("db.internal")
    assert not connect._is_loopback("10.0.0.7")
    # `sslmode` decides when given: this server has no TLS, so `require` cannot connect.
    separator = "&" if "?" in database_url else "?"
    with pytest.raises(pg8000.dbapi.InterfaceError, match="refuses SSL"):
        connector_from_url(f"{database_url}{separator}sslmode=require", 10)()
    connector_from_url(f"{database_url}{separator}sslmode=prefer", 10)().close()
    with pytest.raises(TalonError, match="sslmode must be one of"):
        connector_from_url(f"{database_url}{separator}sslmode=allow", 10)


def test_pool_replaces_a_connection_the_server_closed(database_url: str) -> None:
    db = Database(connector_from_url(database_url, 10), 2, ping_after_idle_seconds=0)
    try:
        with db.transaction() as tx:
            victim = tx.scalar("SELECT pg_backend_pid()")
        killer = connector_from_url(database_url, 10)()
        killer.autocommit = True
        killer.cursor().execute("SELECT pg_terminate_backend(%s)", (victim,))
        killer.close()
        # The pooled connection is dead; the caller still gets a working transaction.
        with db.transaction() as tx:
            assert tx.scalar("SELECT pg_backend_pid()") != victim
    finally:
        db.close()


def test_pool_hands_out_its_size_and_gives_a_failed_connect_s_slot_back(
    database_url: str,
) -> None:
    """A pool of two hands out two connections at once and counts them; a connection that
    cannot be opened answers Unavailable and leaves its slot free, so the pool is not
    drained by a database that was briefly away."""
    real = connector_from_url(database_url, 10)
    failing = [True]

    def connect() -> Any:
        if failing[0]:
            raise pg8000.dbapi.InterfaceError("refused")
        return real()

    db = Database(connect, 2)
    try:
        for _ in range(3):  # more failures than slots: each gave its slot back
            with pytest.raises(Unavailable), db.transaction():
                pass
        assert db.in_use == 0
        failing[0] = False
        with db.transaction() as first, db.transaction() as second:
            assert db.in_use == 2
            pids = {first.scalar("SELECT pg_backend_pid()"),
                    second.scalar("SELECT pg_backend_pid()")}  # fmt: skip
        assert len(pids) == 2 and db.in_use == 0
        # The last connection returned is the next handed out: one stays warm.
        with db.transaction() as tx:
            assert tx.scalar("SELECT pg_backend_pid()") in pids
    finally:
        db.close()


def test_pool_keeps_its_slot_through_an_interrupt_and_closes_what_is_returned_late(
    database_url: str,
) -> None:
    """An interrupt while a connection is being opened leaves its slot free; a connection
    returned while the pool closes (after `_release` saw it open, before it put the
    connection back) is closed, not kept in a closed pool."""
    real = connector_from_url(database_url, 10)
    interrupt = [True]

    def connect() -> Any:
        if interrupt[0]:
            interrupt[0] = False
            raise KeyboardInterrupt
        return real()

    db = Database(connect, 1)
    with pytest.raises(KeyboardInterrupt), db.transaction():
        pass
    with db.transaction() as tx:  # the pool's one slot is free again
        assert tx.scalar("SELECT 1") == 1
        connection = tx.connection
        assert db.in_use == 1

        class ClosingMeanwhile(list[Any]):
            def append(self, item: Any) -> None:
                db.close()  # lands between `_release`'s check and its append
                super().append(item)

        db._idle = ClosingMeanwhile()  # type: ignore[assignment]
    assert not db._idle and db.closed and db.in_use == 0
    with pytest.raises(pg8000.dbapi.InterfaceError):
        connection.cursor().execute("SELECT 1")
    with pytest.raises(Unavailable):
        db._acquire()


def test_timestamps_read_back_as_postgresql_wrote_them(db: Database) -> None:
    """`timestamptz` values are parsed by Talon's reader (fast), with pg8000's for what it
    refuses: the same instant whatever the session's time zone, and the values outside
    `datetime` (infinity, BC, years past 9999) as pg8000 gives them."""
    from datetime import UTC, datetime, timedelta

    instant = "'2026-12-02 12:27:28.030123+00'::timestamptz"
    with db.transaction() as tx:
        for zone in ("UTC", "Asia/Kolkata", "America/St_Johns"):
            tx.execute(f"SET LOCAL TimeZone = '{zone}'")
            read = tx.scalar(f"SELECT {instant}")
            assert read == datetime(2026, 12, 2, 12, 27, 28, 30123, tzinfo=UTC)
        tx.execute("SET LOCAL TimeZone = 'Europe/Amsterdam'")  # local mean time: +00:19:32
        old = tx.scalar("SELECT '1900-01-01 00:00:00+00'::timestamptz")
        assert old == datetime(1900, 1, 1, tzinfo=UTC)
        assert old.utcoffset() == timedelta(minutes=19, seconds=32)
        assert tx.scalar("SELECT '2026-01-01 00:00:00+00'::timestamptz") == datetime(
            2026, 1, 1, tzinfo=UTC
        )
        assert tx.scalar("SELECT 'infinity'::timestamptz") == "infinity"
        assert tx.scalar("SELECT '-infinity'::timestamptz") == "-infinity"
        assert str(tx.scalar("SELECT '0044-03-15 00:00:00+00 BC'::timestamptz")).endswith("BC")
        tx.execute("SET LOCAL TimeZone = 'UTC'")
        assert tx.scalar("SELECT '20000-01-01 00:00:00+00'::timestamptz") == (
            "20000-01-01 00:00:00+00"
        )


def test_a_prepared_first_statement_runs_inside_its_transaction(database_url: str) -> None:
    """BEGIN travels with a transaction's first (already prepared) statement: the statement
    must still be inside the transaction, and a failure must leave the connection in step."""
    db = Database(connector_from_url(database_url, 10), 1)  # one connection, reused
    insert = "INSERT INTO pipelined (k) VALUES (%s)"
    try:
        with db.transaction() as tx:
            tx.execute("CREATE TABLE pipelined (k int PRIMARY KEY)")
            tx.execute(insert, (1,))  # prepared here, after a BEGIN of its own
        with db.transaction() as tx:
            tx.execute(insert, (2,))  # the first statement: BEGIN goes with it
            raise RollbackOnly  # ...so this discards it
        with pytest.raises(Conflict), db.transaction() as tx:
            tx.execute(insert, (1,))  # fails as the first statement
        count = "SELECT count(*) FROM pipelined WHERE k >= %s"
        for _ in range(3):  # still in step: each answer is its own statement's
            with db.transaction() as tx:
                assert tx.scalar(count, (0,)) == 1
                assert tx.scalar("SELECT %s::int + 1", (41,)) == 42
    finally:
        db.close()


def test_a_failing_commit_is_an_error_and_the_connection_stays_usable(database_url: str) -> None:
    db = Database(connector_from_url(database_url, 10), 1)
    try:
        with db.transaction() as tx:
            tx.execute("CREATE TABLE deferred_check (k int UNIQUE DEFERRABLE INITIALLY DEFERRED)")
        # The duplicate is only caught by COMMIT itself.
        with pytest.raises(Conflict), db.transaction() as tx:
            tx.execute("INSERT INTO deferred_check VALUES (%s), (%s)", (1, 1))
        with db.transaction() as tx:
            assert tx.scalar("SELECT count(*) FROM deferred_check WHERE k = %s", (1,)) == 0
            tx.execute("INSERT INTO deferred_check VALUES (%s)", (1,))
        with db.transaction() as tx:
            assert tx.scalar("SELECT count(*) FROM deferred_check WHERE k = %s", (1,)) == 1
    finally:
        db.close()


@pytest.fixture
def one_connection(database_url: str) -> Iterator[Database]:
    """A pool of one connection: every transaction reuses it, so a test sees whether the
    connection stayed in step after what it did."""
    db = Database(connector_from_url(database_url, 10), 1)
    yield db
    db.close()


def test_deferred_statements_run_in_order_with_the_next_statement_or_the_commit(
    one_connection: Database,
) -> None:
    db = one_connection
    insert = "INSERT INTO deferred_order (k, seen) SELECT %s, count(*) FROM deferred_order"
    with db.transaction() as tx:
        tx.execute("CREATE TABLE deferred_order (k int PRIMARY KEY, seen int)")
    with db.transaction() as tx:
        tx.defer(insert, (1,))
        tx.defer(insert, (2,))
        # Sent with this statement, before it: it sees both rows.
        assert tx.scalar("SELECT count(*) FROM deferred_order WHERE k > %s", (0,)) == 2
        tx.defer(insert, (3,))  # sent with the COMMIT
    with db.transaction() as tx:
        rows = tx.all("SELECT k, seen FROM deferred_order WHERE k > %s ORDER BY k", (0,))
    assert [(r["k"], r["seen"]) for r in rows] == [(1, 0), (2, 1), (3, 2)]


def test_a_failing_deferred_statement_rolls_back_its_transaction(one_connection: Database) -> None:
    """A deferred statement's error surfaces at the commit it travels with: nothing of the
    transaction stays, the caller gets the error, and the connection stays in step."""
    db = one_connection
    insert = "INSERT INTO deferred_fail (k) VALUES (%s)"
    with db.transaction() as tx:
        tx.execute("CREATE TABLE deferred_fail (k int PRIMARY KEY)")
        tx.execute(insert, (1,))
    with pytest.raises(Conflict), db.transaction() as tx:
        tx.execute(insert, (2,))
        tx.defer(insert, (1,))  # a duplicate, found out by the COMMIT's round trip
        tx.defer(insert, (3,))  # after the failure: refused, never written
    with pytest.raises(Conflict), db.transaction() as tx:
        tx.defer(insert, (1,))  # found out by the next statement's round trip
        tx.scalar("SELECT count(*) FROM deferred_fail WHERE k > %s", (0,))
    for _ in range(3):  # in step: each answer is its own statement's
        with db.transaction() as tx:
            assert tx.scalar("SELECT count(*) FROM deferred_fail WHERE k > %s", (0,)) == 1
            assert tx.scalar("SELECT %s::int + 1", (41,)) == 42


def test_deferred_statements_of_a_dry_run_are_checked_then_discarded(
    one_connection: Database,
) -> None:
    db = one_connection
    insert = "INSERT INTO deferred_dry (k) VALUES (%s)"
    with db.transaction() as tx:
        tx.execute("CREATE TABLE deferred_dry (k int PRIMARY KEY)")
        tx.execute(insert, (1,))
    with db.transaction() as tx:
        tx.defer(insert, (2,))
        raise RollbackOnly
    with pytest.raises(Conflict), db.transaction() as tx:
        tx.defer(insert, (1,))
        raise RollbackOnly  # the dry run still reports what would have failed
    with db.transaction() as tx:
        assert tx.scalar("SELECT array_agg(k) FROM deferred_dry WHERE k > %s", (0,)) == [1]


def test_deferred_statements_and_the_commit_cost_one_round_trip(one_connection: Database) -> None:
    """What deferring is for: three writes and their commit in one exchange with the server
    (counted as the times the client sends what it wrote)."""
    db = one_connection
    insert = "INSERT INTO deferred_trip (k) VALUES (%s)"
    count = "SELECT count(*) FROM deferred_trip WHERE k > %s"
    with db.transaction() as tx:
        tx.execute("CREATE TABLE deferred_trip (k int PRIMARY KEY)")
        tx.execute(insert, (0,))  # prepared
        tx.scalar(count, (0,))  # prepared
    with db.transaction() as tx:
        tx.scalar(count, (0,))  # BEGIN prepared,
        tx.defer(insert, (-1,))  # and COMMIT
        counted = _FlushCounter(tx.connection._sock)
        tx.connection._sock = counted
    counted.flushes = 0  # the transaction above
    with db.transaction() as tx:
        for k in (1, 2, 3):
            tx.defer(insert, (k,))
    assert counted.flushes == 1
    with db.transaction() as tx:
        tx.defer(insert, (4,))
        assert tx.scalar(count, (0,)) == 4
    assert counted.flushes == 3  # BEGIN + insert + the count, then the COMMIT


class _FlushCounter:
    """pg8000's socket file, counting the times what was written is sent."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        self._sock.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_a_later_statement_has_its_rows_once_the_next_one_ran(one_connection: Database) -> None:
    db = one_connection
    with db.transaction() as tx:
        later = tx.later("SELECT %s::int AS n", (7,))
        assert later.rows is None  # not sent yet
        assert tx.scalar("SELECT %s::int", (8,)) == 8
        assert later.rows == [{"n": 7}]
        last = tx.later("SELECT %s::int AS n", (9,))
    assert last.rows == [{"n": 9}]  # sent with the COMMIT
