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

from pg8000.converters import make_params
from pg8000.core import (
    BIND,
    COMMAND_COMPLETE,
    EMPTY_QUERY_RESPONSE,
    ERROR_RESPONSE,
    EXECUTE_MSG,
    NULL_BYTE,
    READY_FOR_QUERY,
    SYNC_MSG,
    Context,
    H_pack,
    _flush,
    _read,
    _write,
    ci_unpack,
    i_pack,
)
from pg8000.dbapi import Connection, InterfaceError, convert_paramstyle

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


def run_batch(
    connection: Connection, batch: Sequence[tuple[str, Params]], *, commit: bool = False
) -> list[Result]:
    """Execute the statements of `batch` in order in one round trip, and COMMIT in the same
    round trip if `commit`; their results, in order.

    A transaction that begins and commits in this batch is the exchange's implicit one: the
    server runs every Execute up to the Sync in one transaction and commits it at the Sync
    (rolls it back if a statement failed, leaving the connection idle), so it needs neither
    a BEGIN nor a COMMIT statement, each a portal, a snapshot and a command tag of its own
    (issue 19: 0.03-0.06 ms of PostgreSQL's CPU per turn). Such a batch must not hold what
    only a transaction block allows (`LOCK TABLE`, `SAVEPOINT`, `DECLARE`: refused; `SET
    LOCAL`: a warning); none does. Because nothing of it is left when it fails, it is run
    once more, prepared afresh, if the server refused a prepared statement whose tables
    changed shape since ("cached plan must not change result type", e.g. a column retyped by
    a migration while this process runs). Otherwise BEGIN (when the
    connection is idle), the statements and COMMIT (if `commit`) are prepared statements
    executed in one extended-protocol exchange with a single Sync and no Flush: the server
    answers each in order and sends at the Sync's ReadyForQuery, or earlier only when its
    8 kB output buffer fills (it sends at every ReadyForQuery and every Flush: a Sync per
    statement cost a send on each side per statement, pg8000's Flush after each Bind and
    Execute two sends per statement). A failing statement makes the server skip the rest up
    to the Sync, COMMIT included, so nothing after it runs and an explicit transaction is
    left failed for the caller's ROLLBACK (the implicit one is rolled back); every answer
    is read, so the connection stays in step, before the error is raised.

    Everything is written before anything is read, so a batch must not put a statement with
    a large input (beyond the sockets' buffers, ~100s of kB) after one with a large answer:
    the server would block sending that answer while this side still writes, until the
    socket's timeout. Every value is converted before anything is written, so a value that
    cannot be sent leaves nothing half-written on the connection."""
    return _run_batch(connection, batch, commit=commit, retry=True)


def _run_batch(
    connection: Connection, batch: Sequence[tuple[str, Params]], *, commit: bool, retry: bool
) -> list[Result]:
    cache: OrderedDict[str, _Prepared] | None = getattr(connection, "_talon_statements", None)
    if cache is None:
        cache = OrderedDict()
        connection._talon_statements = cache
    begin = not connection._in_transaction and not connection.autocommit
    implicit = begin and commit
    if implicit:  # the Sync's implicit transaction
        begin = commit = False
    work: list[tuple[str, Params]] = [
        *([(_BEGIN, ())] if begin else []),
        *batch,
        *([(_COMMIT, ())] if commit else []),
    ]
    prepared_work: list[tuple[str, _Prepared, Any]] = []
    for sql, params in work:
        prepared = cache.get(sql)
        if prepared is None:  # Parse and Describe: round trips of their own, once
            prepared = _prepare(connection, cache, sql, params)
        else:
            cache.move_to_end(sql)
        prepared_work.append((sql, prepared, make_params(connection.py_types, params)))
    contexts: list[Context] = []
    exchange = bytearray()
    for _, prepared, values in prepared_work:
        exchange += _bind(prepared.name, values, connection._client_encoding)
        exchange += EXECUTE_MSG
        contexts.append(
            Context(
                columns=prepared.columns,
                input_funcs=prepared.input_funcs,
                statement=prepared.statement,
            )
        )
    exchange += SYNC_MSG
    try:
        _write(connection._sock, exchange)
    except (ValueError, AttributeError) as exc:  # as pg8000's own writes: a closed socket
        raise InterfaceError("connection is closed") from exc
    _flush(connection._sock)
    failure = _read_answers(connection, contexts)
    if failure is not None:
        if _sqlstate(failure) == _FEATURE_NOT_SUPPORTED:
            for sql, _, _ in prepared_work:  # a table changed shape: prepare afresh next time
                cache.pop(sql, None)
            if implicit and retry:  # rolled back whole: nothing ran
                return _run_batch(connection, batch, commit=True, retry=False)
        raise failure
    statements = contexts[1:] if begin else contexts
    return [
        Result([c["name"] for c in context.columns] if context.columns else [],
               context.rows or [], context.row_count)
        for context in statements[: len(batch)]
    ]  # fmt: skip


def _bind(name: bytes, values: Sequence[str | None], encoding: str) -> bytes:
    """A Bind message of `values` (text) to statement `name`, all results as text. pg8000's
    `send_BIND` and `send_EXECUTE` each follow their message with a Flush, which makes the
    server send what it has after every message: two sends (and two wake-ups of the
    reader) per statement instead of one per exchange."""
    body = bytearray(NULL_BYTE + name + H_pack(0) + H_pack(len(values)))
    for value in values:
        if value is None:
            body += i_pack(-1)
        else:
            encoded = value.encode(encoding)
            body += i_pack(len(encoded))
            body += encoded
    body += H_pack(0)
    return BIND + i_pack(len(body) + 4) + body


_BEGIN = "begin transaction"
_COMMIT = "commit"


def _read_answers(connection: Connection, contexts: list[Context]) -> Exception | None:
    """Read the answers of one exchange up to its ReadyForQuery: each statement's ends at its
    CommandComplete; an ErrorResponse ends them all (the server skipped the rest). The
    exchange's error, if any."""
    index, failure = 0, None
    sock = connection._sock
    while True:
        code, data_len = ci_unpack(_read(sock, 5))
        context = contexts[min(index, len(contexts) - 1)]
        connection.message_types[code](_read(sock, data_len - 4), context)
        if code == READY_FOR_QUERY:
            return failure
        if code in (COMMAND_COMPLETE, EMPTY_QUERY_RESPONSE):
            failure = failure or context.error
            index += 1
        elif code == ERROR_RESPONSE:
            failure = failure or context.error
            index = len(contexts)  # nothing after it ran


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
