"""Versioned SQL migrations, applied once under a PostgreSQL advisory lock.

Several functions may start at the same moment; the lock makes exactly one of them apply
pending files while the others wait and then find nothing left to do.

Each file and its `schema_migrations` row commit in one transaction, so a process that dies
half-way leaves either both or neither: never DDL that ran but is not recorded (which the next
start would run again and fail on). A statement PostgreSQL refuses inside a transaction block
(`CREATE INDEX CONCURRENTLY`, `VACUUM`, ...) therefore cannot appear in a migration file; none
does, and since the test fixtures apply every file, one that did would fail the whole suite.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib import resources

from talon.store.database import Database

log = logging.getLogger(__name__)
# Arbitrary constant: the lock id that serialises migrations across processes.
MIGRATION_LOCK_ID = 0x7A10_0001


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("talon.store") / "migrations"
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name.removesuffix(".sql"), p.read_text()) for p in files]


def migrate(db: Database, *, before_commit: Callable[[str], None] | None = None) -> list[str]:
    """Apply pending migrations; return the versions applied by this call.

    `before_commit(version)` runs after a file's SQL and its row, before their commit: the
    seam the crash test uses to kill a migrator at the worst moment."""
    applied_now: list[str] = []
    with db.connection() as conn:
        cur = conn.cursor()
        cur.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
        conn.commit()
        try:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            conn.commit()
            cur.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in cur.fetchall()}
            conn.commit()
            for version, sql in migration_files():
                if version in done:
                    continue
                log.info("applying migration %s", version)
                try:
                    # A multi-statement file must go through the simple protocol, which runs
                    # it as an implicit transaction of its own, committed at once, unless a
                    # transaction block is already open: open one first, so the file and its
                    # row below commit together.
                    conn.execute_simple("BEGIN")
                    conn.execute_simple(sql)
                    cur.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                    if before_commit is not None:
                        before_commit(version)
                    conn.commit()
                except Exception:
                    conn.rollback()
                    raise
                applied_now.append(version)
        finally:
            cur.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))
            conn.commit()
    return applied_now
