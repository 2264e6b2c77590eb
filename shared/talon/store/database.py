"""A small pool of DB-API connections (pg8000 directly or via the Cloud SQL connector).

Every unit of work runs in `Database.transaction()`: commit on success, rollback on error,
so a state change is durable before any caller acknowledges it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeAlias

import pg8000.converters
import pg8000.dbapi

from talon.errors import Conflict, Unavailable
from talon.store import statements

log = logging.getLogger(__name__)

# pg8000 ships no type hints, so its connection is Any to the type checker; the alias names
# what a value is for readers and keeps one place to tighten it.
Connection: TypeAlias = pg8000.dbapi.Connection
Params: TypeAlias = tuple[Any, ...] | list[Any] | None  # pg8000 binds tuples and lists


class RollbackOnly(Exception):
    """Raised inside a transaction to discard it without an error (dry runs)."""


def is_unique_violation(exc: BaseException) -> bool:
    return _sqlstate(exc) == "23505"


def _sqlstate(exc: BaseException) -> str | None:
    if isinstance(exc, pg8000.dbapi.DatabaseError) and exc.args and isinstance(exc.args[0], dict):
        return exc.args[0].get("C")
    return None


def jsonb(value: Any) -> str:
    """Serialise for a `%s::jsonb` parameter."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class Tx:
    """A cursor bound to one open transaction, returning rows as dicts."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._cursor = connection.cursor()
        # What this transaction wrote that others act on once it is committed, by topic
        # (e.g. outbox row ids for the Pub/Sub relay); see Database.on_commit.
        self.announced: dict[str, list[Any]] = {}
        # Statements nobody waits for: they travel with the next statement or the COMMIT, in
        # its round trip (see `defer` and `later`).
        self._deferred: list[tuple[str, statements.Params, Later | None]] = []
        self.committed = False  # by `commit_with`

    def defer(self, sql: str, params: statements.Params) -> None:
        """Run `sql` later in this transaction, in order, without waiting for its answer: it
        is sent with the next statement, or with the COMMIT. A write whose result the caller
        does not need costs no round trip of its own. Should it fail, the statement it
        travels with (or the commit) raises its error and the transaction rolls back. A
        transaction sent whole in one round trip runs without BEGIN (`statements.run_batch`),
        so one that uses what needs a transaction block (`LOCK TABLE`, `SAVEPOINT`, `SET
        LOCAL`) must send a statement of its own before the round trip of its commit."""
        self._queue(sql, params, None)

    def later(
        self,
        sql: str,
        params: statements.Params,
        then: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> Later:
        """As `defer`, keeping the statement's rows: they are in the returned `Later` once the
        statement it travels with has run (a claim whose answer is only needed after the
        next statement, which then costs no round trip of its own). `then(rows)` is called
        as they arrive; an exception it raises comes out of the statement sent with it, so
        the transaction rolls back, unless that statement carried the COMMIT
        (`commit_with`): then what was sent with it must guard its own writes (a turn's
        final write: each of its statements checks the fencing token itself)."""
        result = Later(then)
        self._queue(sql, params, result)
        return result

    def _queue(self, sql: str, params: statements.Params, result: Later | None) -> None:
        if self.committed:
            raise RuntimeError("the transaction was already committed")
        self._deferred.append((sql, params, result))

    def pipeline(
        self, batch: list[tuple[str, statements.Params]], *, commit: bool = False
    ) -> list[list[dict[str, Any]]]:
        """Run the statements of `batch` in order in one round trip (after any deferred ones);
        the rows of each. Each still sees the database as of its own start (a statement
        after a lock sees what the lock's holder committed). With `commit`, the COMMIT goes
        in the same round trip, as with `commit_with`."""
        return [_dicts(result) for result in self._send(batch, commit=commit)]

    def commit_with(self, sql: str, params: statements.Params) -> list[dict[str, Any]]:
        """Run the transaction's last statement and COMMIT it in one round trip (with any
        deferred statements before it); its rows. The transaction is over: a further
        statement is an error. Should the statement fail, the COMMIT rolls back."""
        return _dicts(self._send([(sql, params)], commit=True)[0])

    def flush(self, *, commit: bool = False) -> None:
        """Send the deferred statements now (with the COMMIT, if `commit`)."""
        if self._deferred or commit:
            self._send([], commit=commit)

    def _send(
        self, batch: list[tuple[str, statements.Params]], *, commit: bool = False
    ) -> list[statements.Result]:
        """The deferred statements, then `batch` (then COMMIT), in one round trip; the
        results of `batch`."""
        if self.committed:
            raise RuntimeError("the transaction was already committed")
        deferred, self._deferred = self._deferred, []
        if commit:
            self.committed = True  # whatever happens next, nothing more runs in it
        if commit and not deferred and not batch:
            statements.commit(self.connection)
            return []
        work = [(sql, params) for sql, params, _ in deferred] + batch
        results = statements.run_batch(self.connection, work, commit=commit)
        for (_, _, waiting), result in zip(deferred, results, strict=False):
            if waiting is not None:
                waiting.rows = _dicts(result)
                if waiting.then is not None:
                    waiting.then(waiting.rows)
        return results[len(deferred) :]

    def announce(self, topic: str, item: Any) -> None:
        self.announced.setdefault(topic, []).append(item)

    def _run(self, sql: str, params: Params) -> statements.Result:
        if params:
            return self._send([(sql, params)])[0]
        self.flush()
        # No parameters: the simple protocol (also the only one for multi-statement SQL).
        self._cursor.execute(sql)
        names = [d[0] for d in self._cursor.description or []]
        rows = self._cursor.fetchall() if names else []
        return statements.Result(names, list(rows), self._cursor.rowcount)

    def execute(self, sql: str, params: Params = None) -> int:
        return self._run(sql, params).row_count

    def all(self, sql: str, params: Params = None) -> list[dict[str, Any]]:
        return _dicts(self._run(sql, params))

    def one(self, sql: str, params: Params = None) -> dict[str, Any] | None:
        rows = self.all(sql, params)
        return rows[0] if rows else None

    def scalar(self, sql: str, params: Params = None) -> Any:
        result = self._run(sql, params)
        return result.rows[0][0] if result.rows else None


class Later:
    """The rows of a statement sent with a later one (`Tx.later`): None until it has run."""

    __slots__ = ("rows", "then")

    def __init__(self, then: Callable[[list[dict[str, Any]]], None] | None = None) -> None:
        self.rows: list[dict[str, Any]] | None = None
        self.then = then


def _dicts(result: statements.Result) -> list[dict[str, Any]]:
    return [dict(zip(result.names, row, strict=True)) for row in result.rows]


# Run once on every new connection. Talon prepares each statement once per connection
# (`statements.py`), and its statements are keyed lookups whose best plan does not depend on
# the values bound: PostgreSQL's default re-plans a statement at every execution whenever it
# estimates the generic plan dearer than the custom ones it tried, ~5% of its CPU per turn
# (issue 19, bench/turns.py --prefill-turns). Plans still follow the tables: autovacuum's
# ANALYZE invalidates them. A SET rather than a startup parameter, which PgBouncer refuses.
SESSION_SETUP = "SET plan_cache_mode = force_generic_plan"


def _set_up(connection: Connection) -> Connection:
    connection.execute_simple(SESSION_SETUP)  # outside a transaction: for the session
    connection.register_in_adapter(_TIMESTAMPTZ_OID, _timestamptz_in)
    return connection


_TIMESTAMPTZ_OID = 1184


def _timestamptz_in(text: str) -> Any:
    """A `timestamptz` as PostgreSQL writes it (`2026-12-02 12:27:28.030123+00`): pg8000
    parses it with `strptime`, ~6 us each, a few times in every turn's claim;
    `fromisoformat` reads the same in 0.1 us, and offsets with seconds (local mean time,
    before 1900 or so), which pg8000 left as text. What it refuses (infinity, BC, years past
    9999, a DateStyle other than ISO) goes to pg8000's parser."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return pg8000.converters.timestamptz_in(text)


class Database:
    def __init__(
        self,
        connect: Callable[[], Connection],
        pool_size: int = 5,
        *,
        ping_after_idle_seconds: float = 30.0,
    ) -> None:
        self._connect = lambda: _set_up(connect())
        # (connection, monotonic time it was returned to the pool), the last returned at the
        # right: handed out first, so that under light load one connection stays warm and
        # the others age out. `append` and `pop` are atomic; `_slots` decides who may pop.
        self._idle: deque[tuple[Connection, float]] = deque()
        self._ping_after = ping_after_idle_seconds
        self._commit_hooks: dict[str, Callable[[list[Any]], object]] = {}
        # One token per connection the pool may hand out: a C-level queue rather than a
        # `threading.Semaphore` and a `queue.Queue`, whose Python-level conditions cost a
        # worker (16 handlers on 2 connections) ~1% of its CPU per turn (issue 19).
        self._slots: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(pool_size):
            self._slots.put(None)
        self._closed = False
        self.size = pool_size

    def on_commit(self, topic: str, hook: Callable[[list[Any]], object]) -> None:
        """Call `hook` with the items a transaction announced on `topic`, after it commits.
        The commit already stands: a failing hook is logged, and the item must be recoverable
        from the database (a sweep), never only from the hook."""
        self._commit_hooks[topic] = hook

    def _run_commit_hooks(self, announced: dict[str, list[Any]]) -> None:
        for topic, items in announced.items():
            hook = self._commit_hooks.get(topic)
            if hook is None:
                continue
            try:
                hook(items)
            except Exception as exc:
                log.warning("after-commit hook %r failed; left for its sweep: %s", topic, exc)

    @property
    def closed(self) -> bool:
        return self._closed

    def raw_connect(self) -> Connection:
        """A new connection outside the pool (for LISTEN, which holds one for good)."""
        return self._connect()

    def _acquire(self) -> Connection:
        if self._closed:
            # A closed pool opens nothing: work still running from before the close (an SSE
            # stream re-checking its token at shutdown) is answered as unavailable instead of
            # connecting again, to a database that may be gone by then.
            raise Unavailable("the database pool is closed")
        try:
            self._slots.get(timeout=30)
        except queue.Empty:
            raise Unavailable("database connection pool exhausted") from None
        try:
            return self._idle_or_new()
        except BaseException:  # the slot is not taken after all (an interrupt included)
            self._slots.put(None)
            raise

    def _idle_or_new(self) -> Connection:
        while True:
            try:
                connection, since = self._idle.pop()
            except IndexError:
                break
            # A connection idle for a while may have been cut by the server, a proxy or a
            # restart; check it rather than fail the caller's first statement.
            try:
                if time.monotonic() - since < self._ping_after or _alive(connection):
                    return connection
            except BaseException:  # interrupted while checking: not left open
                _close_quietly(connection)
                raise
            _close_quietly(connection)
        try:
            return self._connect()
        except Exception as exc:
            log.error("database connection failed: %s", exc)
            raise Unavailable("database is unavailable") from exc

    @property
    def in_use(self) -> int:
        """The pool's connections in use or being opened right now (a metric: a moment's
        count; while the database is away, every slot may be waiting on a connect)."""
        return max(0, self.size - self._slots.qsize())

    def _release(self, connection: Connection, healthy: bool) -> None:
        try:
            if healthy and not self._closed:
                self._idle.append((connection, time.monotonic()))
                if self._closed:  # close() emptied the pool in between: this one too
                    self._close_idle()
            else:
                _close_quietly(connection)
        finally:
            self._slots.put(None)

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        connection = self._acquire()
        healthy = True
        try:
            tx = Tx(connection)
            try:
                yield tx
                if not tx.committed:  # else by its last statement (Tx.commit_with)
                    tx.flush(commit=True)
                self._run_commit_hooks(tx.announced)
            except RollbackOnly:
                try:
                    tx.flush()  # a dry run still learns whether its writes would have failed
                finally:
                    statements.rollback(connection)
            except BaseException:
                try:
                    statements.rollback(connection)
                except Exception:
                    healthy = False
                raise
        except pg8000.dbapi.InterfaceError as exc:
            healthy = False
            raise Unavailable("lost the database connection") from exc
        except pg8000.dbapi.DatabaseError as exc:
            if is_unique_violation(exc):
                raise Conflict("a concurrent change conflicted with this one; retry") from exc
            if _sqlstate(exc) in ("40001", "40P01"):
                raise Conflict("a concurrent change conflicted with this one; retry") from exc
            raise
        finally:
            self._release(connection, healthy)

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A raw autocommit-free connection for session-level work (advisory locks)."""
        connection = self._acquire()
        healthy = True
        try:
            yield connection
        except pg8000.dbapi.InterfaceError:
            healthy = False
            raise
        finally:
            self._release(connection, healthy)

    def close(self) -> None:
        self._closed = True
        self._close_idle()

    def _close_idle(self) -> None:
        while True:
            try:
                _close_quietly(self._idle.pop()[0])
            except IndexError:
                return


def _alive(connection: Connection) -> bool:
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT 1")
        cursor.fetchall()
        statements.rollback(connection)
        return True
    except Exception:
        return False


def _close_quietly(connection: Connection) -> None:
    with contextlib.suppress(Exception):
        connection.close()
