"""Named prepared statements per connection, for pg8000.

pg8000's DB-API `execute` parses every statement afresh and takes three round trips (parse,
describe, bind/execute, each with its own Sync). A statement prepared once per connection runs
in one round trip and skips parsing (and, after a few runs, planning) on the server: on the
turn path, where the same few dozen statements run all the time, that is most of
PostgreSQL's CPU. Statements are keyed by their SQL text; a bounded LRU keeps dynamic SQL from
growing the cache without end.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import pg8000.dbapi
from pg8000.converters import make_params
from pg8000.core import SYNC_MSG, Context, _flush, _write
from pg8000.dbapi import Connection, convert_paramstyle

MAX_STATEMENTS = 256
_FEATURE_NOT_SUPPORTED = "0A000"  # "cached plan must not change result type" after DDL


class _Prepared:
    __slots__ = ("columns", "input_funcs", "name", "statement")

    def __init__(self, name: bytes, statement: str, columns: Any, input_funcs: Any) -> None:
        self.name = name
        self.statement = statement
        self.columns = columns
        self.input_funcs = input_funcs


class Result:
    __slots__ = ("names", "row_count", "rows")

    def __init__(self, names: list[str], rows: list[Any], row_count: int) -> None:
        self.names = names
        self.rows = rows
        self.row_count = row_count


Params = tuple[Any, ...] | list[Any]


def run(connection: Connection, sql: str, params: Params) -> Result:
    """Execute `sql` (format paramstyle) with `params` as a cached prepared statement."""
    return run_batch(connection, [(sql, params)])[0]


def run_batch(
    connection: Connection, batch: Sequence[tuple[str, Params]], *, commit: bool = False
) -> list[Result]:
    """Execute the statements of `batch` in order in one round trip, and COMMIT in the same
    round trip if `commit`; their results, in order.

    Every message is written before any answer is read; each statement has its own Sync,
    so the answers come back in order, each ending at its ReadyForQuery. A failing statement
    aborts the transaction: the statements after it fail too and a COMMIT rolls back. Every
    answer is read, so the connection stays in step, before the first error is raised.
    BEGIN goes first in the same round trip when the connection is idle: there it cannot
    fail short of the connection failing (and with it the statements), so no statement
    runs outside its transaction."""
    cache: OrderedDict[str, _Prepared] | None = getattr(connection, "_talon_statements", None)
    if cache is None:
        cache = OrderedDict()
        connection._talon_statements = cache
    begin = not connection._in_transaction and not connection.autocommit
    work: list[tuple[str, _Prepared, Any]] = []
    for sql, params in batch:
        prepared = cache.get(sql)
        if prepared is None:
            if begin:  # preparing takes round trips of its own: BEGIN goes first, alone
                connection.execute_simple("begin transaction")
                begin = False
            prepared = _prepare(connection, cache, sql, params)
        else:
            cache.move_to_end(sql)
        # Every value converted before anything is written: a value pg8000 cannot send
        # fails the batch with nothing half-written on the connection.
        work.append((sql, prepared, make_params(connection.py_types, params)))
    contexts: list[Context] = []
    if begin:
        connection.send_QUERY("begin transaction")
        contexts.append(Context("begin transaction"))
    for _, prepared, values in work:
        connection.send_BIND(prepared.name, values)
        connection.send_EXECUTE()
        _write(connection._sock, SYNC_MSG)
        contexts.append(
            Context(
                columns=prepared.columns,
                input_funcs=prepared.input_funcs,
                statement=prepared.statement,
            )
        )
    if commit:
        connection.send_QUERY("commit")
        contexts.append(Context("commit"))
    _flush(connection._sock)
    failure: Exception | None = None
    for context in contexts:
        try:
            connection.handle_messages(context)
        except pg8000.dbapi.InterfaceError as exc:
            # The connection failed (nothing more will come), or pg8000's complaint about a
            # COMMIT after a failure already recorded (the last answer): stop reading.
            failure = failure or exc
            break
        except Exception as exc:
            failure = failure or exc
    if failure is not None:
        if _sqlstate(failure) == _FEATURE_NOT_SUPPORTED:
            for sql, _, _ in work:  # a table changed shape: prepare afresh next time
                cache.pop(sql, None)
        raise failure
    statements = contexts[1:] if begin else contexts
    return [
        Result([c["name"] for c in context.columns] if context.columns else [],
               context.rows or [], context.row_count)
        for context in statements[: len(work)]
    ]  # fmt: skip


def _prepare(
    connection: Connection, cache: OrderedDict[str, _Prepared], sql: str, params: Params
) -> _Prepared:
    # Rewriting %s to $n walks the SQL character by character: once per statement, since
    # with the format paramstyle the values pass through unchanged.
    statement, _ = convert_paramstyle("format", sql, params)
    name, columns, input_funcs = connection.prepare_statement(statement, ())
    prepared = _Prepared(name, statement, columns, input_funcs)
    cache[sql] = prepared
    if len(cache) > MAX_STATEMENTS:
        _, evicted = cache.popitem(last=False)
        connection.close_prepared_statement(evicted.name)
    return prepared


def commit(connection: Connection) -> None:
    """COMMIT in one round trip: pg8000's `commit()` sends it through the extended protocol
    (parse, describe, then bind/execute, each waiting for its own answer)."""
    connection.execute_simple("commit")


def rollback(connection: Connection) -> None:
    """ROLLBACK in one round trip, if a transaction is open (as pg8000's `rollback()`)."""
    if connection._in_transaction:
        connection.execute_simple("rollback")


def _sqlstate(exc: Exception) -> str | None:
    detail = exc.args[0] if exc.args else None
    return detail.get("C") if isinstance(detail, dict) else None
