"""Prepared statements in one exchange (`store/statements.py`), seen on the wire: a relay
between pg8000 and the test PostgreSQL records what each side sends."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest
from pg8000.dbapi import DatabaseError

from talon.store import statements
from talon.store.connect import connector_from_url


class _Relay:
    """TCP from the client to `upstream`, keeping each chunk each side sent, in order."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.from_client: list[bytes] = []
        self.from_server: list[bytes] = []
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def clear(self) -> None:
        self.from_client.clear()
        self.from_server.clear()

    def close(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a pump blocked in recv
        for sock in [self._listener, *self._sockets]:
            sock.close()

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        server = socket.create_connection(self._upstream)
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sockets += [client, server]
        for source, target, chunks in (
            (client, server, self.from_client),
            (server, client, self.from_server),
        ):
            threading.Thread(target=self._pump, args=(source, target, chunks), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket, chunks: list[bytes]) -> None:
        try:
            while chunk := source.recv(1 << 20):
                chunks.append(chunk)  # before it is forwarded: the reader sees it recorded
                target.sendall(chunk)
        except OSError:
            pass


def _message_types(stream: bytes) -> list[str]:
    types, at = [], 0
    while at < len(stream):
        (length,) = struct.unpack("!i", stream[at + 1 : at + 5])
        types.append(chr(stream[at]))
        at += 1 + length
    return types


@pytest.fixture
def relay(database_url: str) -> Iterator[tuple[_Relay, str]]:
    url = urlparse(database_url)
    relay = _Relay((url.hostname or "127.0.0.1", url.port or 5432))
    credentials = url.netloc.rpartition("@")[0]
    yield relay, url._replace(netloc=f"{credentials}@127.0.0.1:{relay.port}").geturl()
    relay.close()


def test_a_batch_is_one_send_each_way_with_no_flush_between_statements(
    relay: tuple[_Relay, str],
) -> None:
    wire, url = relay
    connection = connector_from_url(url, 10)()
    try:
        # Each statement takes a moment, so a server told to flush mid-exchange sends apart.
        batch = [("SELECT %s::int FROM pg_sleep(0.005)", (n,)) for n in range(4)]
        statements.run_batch(connection, batch, commit=True)  # prepares: exchanges of their own
        wire.clear()

        results = statements.run_batch(connection, batch, commit=True)

        assert [result.rows for result in results] == [[[n]] for n in range(4)]
        assert len(wire.from_client) == 1
        # The four statements, each a Bind and an Execute, then one Sync: a Flush ('H') after
        # any of them would make the server send what it has at that point. No BEGIN and no
        # COMMIT: the exchange's implicit transaction is the batch's.
        assert _message_types(wire.from_client[0]) == ["B", "E"] * 4 + ["S"]
        assert len(wire.from_server) == 1, [_message_types(c) for c in wire.from_server]
        answer = _message_types(wire.from_server[0])
        assert answer.count("2") == 4 and answer.count("C") == 4 and answer[-1] == "Z"
    finally:
        connection.close()


def test_a_transaction_spanning_batches_begins_and_commits_with_statements(
    relay: tuple[_Relay, str],
) -> None:
    wire, url = relay
    connection = connector_from_url(url, 10)()
    try:
        statement = ("SELECT %s::int", (1,))
        statements.run_batch(connection, [statement])
        statements.run_batch(connection, [statement], commit=True)  # prepared, all three
        wire.clear()

        statements.run_batch(connection, [statement])
        assert connection._in_transaction
        statements.run_batch(connection, [statement], commit=True)

        assert not connection._in_transaction
        sent = [_message_types(chunk) for chunk in wire.from_client]
        assert sent == [["B", "E"] * 2 + ["S"], ["B", "E"] * 2 + ["S"]]  # BEGIN, ...; ..., COMMIT
    finally:
        connection.close()


@pytest.fixture
def numbers(database_url: str) -> Iterator[tuple[Any, Any, str]]:
    """Two connections and a fresh table of positive numbers, named as the third item."""
    connect = connector_from_url(database_url, 10)
    writer, reader = connect(), connect()
    table = f"numbers_{uuid.uuid4().hex}"
    writer.execute_simple(f"CREATE TABLE {table} (n int CHECK (n > 0))")
    yield writer, reader, table
    statements.rollback(writer)
    writer.execute_simple(f"DROP TABLE {table}")
    writer.close()
    reader.close()


def _committed(reader: Any, table: str) -> list[int]:
    rows = statements.run_batch(reader, [(f"SELECT n FROM {table} ORDER BY n", ())], commit=True)
    return [row[0] for row in rows[0].rows]


def test_a_batch_that_begins_and_commits_is_one_transaction_committed_at_its_end(
    numbers: tuple[Any, Any, str],
) -> None:
    writer, reader, table = numbers
    insert = f"INSERT INTO {table} (n) VALUES (%s) RETURNING pg_current_xact_id()::text"

    first, second = statements.run_batch(writer, [(insert, (1,)), (insert, (2,))], commit=True)

    assert first.rows == second.rows  # one transaction
    assert not writer._in_transaction
    assert _committed(reader, table) == [1, 2]


def test_a_failing_statement_rolls_the_whole_batch_back_and_leaves_the_connection_idle(
    numbers: tuple[Any, Any, str],
) -> None:
    writer, reader, table = numbers
    insert = f"INSERT INTO {table} (n) VALUES (%s)"

    with pytest.raises(DatabaseError, match="check constraint"):
        statements.run_batch(writer, [(insert, (1,)), (insert, (-1,)), (insert, (3,))], commit=True)

    assert not writer._in_transaction
    assert _committed(reader, table) == []
    statements.run_batch(writer, [(insert, (4,))], commit=True)  # the connection is usable
    assert _committed(reader, table) == [4]


class _Recording:
    """A connection's socket file that keeps what is written to it."""

    def __init__(self) -> None:
        self.written = bytearray()

    def write(self, data: bytes) -> None:
        self.written += data

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("encoding", ["utf8", "latin-1"])
def test_a_bind_is_the_bytes_pg8000_sends_without_its_flush(encoding: str) -> None:
    """`statements._bind` stands in for pg8000's `send_BIND`: the same message, text values,
    NULLs, empty and long values, in the connection's encoding."""
    from pg8000.core import FLUSH_MSG, CoreConnection

    values = [None, "", "plain", "é ü ß", "x" * 70_000]
    connection = CoreConnection.__new__(CoreConnection)  # only its writer, no server
    connection._sock = _Recording()
    connection._client_encoding = encoding
    connection.send_BIND(b"pg8000_statement_7", values)
    theirs = bytes(connection._sock.written)

    ours = statements._bind(b"pg8000_statement_7", values, encoding)

    assert theirs == ours + FLUSH_MSG


def test_a_batch_is_retried_whole_when_its_table_changed_shape_since_it_was_prepared(
    numbers: tuple[Any, Any, str],
) -> None:
    """A migration retyping a column while this process runs: the server refuses the
    prepared statement once ("cached plan must not change result type"); the batch was its
    own transaction, rolled back whole, so it is prepared again and run once more."""
    writer, reader, table = numbers
    batch = [
        (f"INSERT INTO {table} (n) VALUES (%s)", (5,)),
        (f"SELECT n, pg_typeof(n)::text FROM {table} ORDER BY n", ()),
    ]
    statements.run_batch(writer, batch, commit=True)
    reader.execute_simple(f"ALTER TABLE {table} ALTER COLUMN n TYPE bigint")

    _, rows = statements.run_batch(writer, batch, commit=True)

    assert rows.rows == [[5, "bigint"], [5, "bigint"]]  # inserted once more, not twice


def test_a_changed_table_inside_a_longer_transaction_is_an_error_for_the_caller(
    numbers: tuple[Any, Any, str],
) -> None:
    writer, reader, table = numbers
    select = (f"SELECT n FROM {table}", ())
    statements.run_batch(writer, [select], commit=True)
    reader.execute_simple(f"ALTER TABLE {table} ALTER COLUMN n TYPE bigint")
    statements.run_batch(writer, [("SELECT 1", ())])  # a transaction is open: no retry

    with pytest.raises(DatabaseError, match="cached plan must not change result type"):
        statements.run_batch(writer, [select], commit=True)

    statements.rollback(writer)
    assert statements.run_batch(writer, [select], commit=True)[0].rows == []  # prepared again


def test_an_error_at_commit_is_raised_and_nothing_is_committed(
    numbers: tuple[Any, Any, str],
) -> None:
    writer, reader, table = numbers
    writer.execute_simple(
        f"ALTER TABLE {table} ADD CONSTRAINT {table}_unique UNIQUE (n) "
        "DEFERRABLE INITIALLY DEFERRED"
    )
    insert = f"INSERT INTO {table} (n) VALUES (%s)"

    with pytest.raises(DatabaseError, match="duplicate key"):  # checked at the Sync's commit
        statements.run_batch(writer, [(insert, (7,)), (insert, (8,)), (insert, (7,))], commit=True)

    assert not writer._in_transaction
    assert _committed(reader, table) == []
