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
from typing import Any

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


def run(connection: Connection, sql: str, params: tuple[Any, ...] | list[Any]) -> Result:
    """Execute `sql` (format paramstyle) with `params` as a cached prepared statement."""
    cache: OrderedDict[str, _Prepared] | None = getattr(connection, "_talon_statements", None)
    if cache is None:
        cache = OrderedDict()
        connection._talon_statements = cache
    begin = not connection._in_transaction and not connection.autocommit
    prepared = cache.get(sql)
    if prepared is None:
        if begin:  # preparing takes round trips of its own: BEGIN goes first, alone
            connection.execute_simple("begin transaction")
            begin = False
        # Rewriting %s to $n walks the SQL character by character: once per statement, since
        # with the format paramstyle the values pass through unchanged.
        statement, _ = convert_paramstyle("format", sql, params)
        name, columns, input_funcs = connection.prepare_statement(statement, ())
        prepared = _Prepared(name, statement, columns, input_funcs)
        cache[sql] = prepared
        if len(cache) > MAX_STATEMENTS:
            _, evicted = cache.popitem(last=False)
            connection.close_prepared_statement(evicted.name)
    else:
        cache.move_to_end(sql)
    try:
        context = _execute(connection, prepared, params, begin=begin)
    except Exception as exc:
        if _sqlstate(exc) == _FEATURE_NOT_SUPPORTED:
            cache.pop(sql, None)  # the table changed shape: prepare afresh next time
        raise
    names = [c["name"] for c in context.columns] if context.columns else []
    return Result(names, context.rows or [], context.row_count)


def commit(connection: Connection) -> None:
    """COMMIT in one round trip: pg8000's `commit()` sends it through the extended protocol
    (parse, describe, then bind/execute, each waiting for its own answer)."""
    connection.execute_simple("commit")


def rollback(connection: Connection) -> None:
    """ROLLBACK in one round trip, if a transaction is open (as pg8000's `rollback()`)."""
    if connection._in_transaction:
        connection.execute_simple("rollback")


def _execute(
    connection: Connection, prepared: _Prepared, params: tuple[Any, ...] | list[Any], *,
    begin: bool,
) -> Context:  # fmt: skip
    """Bind and execute `prepared`. With `begin`, BEGIN goes in the same round trip: both are
    written before either answer is read (the answers come back in order, each ending at its
    ReadyForQuery); a transaction otherwise pays a round trip for BEGIN alone. BEGIN is only
    sent on an idle connection, where it cannot fail short of the connection itself failing
    (and with it the statement), so the statement never runs outside its transaction."""
    values = make_params(connection.py_types, params)
    if not begin:
        return connection.execute_named(
            prepared.name, values, prepared.columns, prepared.input_funcs, prepared.statement
        )
    begun = Context("begin transaction")
    context = Context(
        columns=prepared.columns, input_funcs=prepared.input_funcs, statement=prepared.statement
    )
    connection.send_QUERY("begin transaction")
    connection.send_BIND(prepared.name, values)
    connection.send_EXECUTE()
    _write(connection._sock, SYNC_MSG)
    _flush(connection._sock)
    try:
        connection.handle_messages(begun)
    finally:
        # Read the statement's answer whatever BEGIN said, so the next exchange starts in step.
        connection.handle_messages(context)
    return context


def _sqlstate(exc: Exception) -> str | None:
    detail = exc.args[0] if exc.args else None
    return detail.get("C") if isinstance(detail, dict) else None
