"""Worker liveness on a PostgreSQL session (store/liveness.py) and what the claims make of
it: a lease or a claimed outbox row whose owner holds no lock is free at once; one whose
owner lives is left alone until it expires."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from talon.broker.base import Delivery, Result
from talon.broker.outbox import DISPATCH_TOPIC, enqueue
from talon.broker.postgres import PostgresBroker, _settle_in
from talon.store.database import Database
from talon.store.liveness import APPLICATION_NAME, OwnerLock, owner_gone_sql

pytestmark = pytest.mark.slow


def gone(db: Database, owner: str) -> bool:
    with db.transaction() as tx:
        return bool(tx.scalar(f"SELECT {owner_gone_sql('%s')}", (owner,)))


def wait_gone(db: Database, owner: str) -> None:
    """The server releases a closed connection's locks a moment after the client closes it."""
    deadline = time.monotonic() + 10
    while not gone(db, owner):
        assert time.monotonic() < deadline, f"{owner}'s lock outlived its connection"
        time.sleep(0.01)


def lock(db: Database, owner: str) -> OwnerLock:
    held = OwnerLock(db.raw_connect, owner, closed=lambda: db.closed)
    assert held.wait_held(10)
    return held


def test_an_owner_is_alive_while_its_lock_connection_lives(db: Database) -> None:
    assert gone(db, "w-1")  # never started
    w1 = lock(db, "w-1")
    try:
        assert not gone(db, "w-1")
        assert gone(db, "w-2")  # another owner's key is not this one's
        assert not gone(db, "w-1")  # asking twice (the shared probe is released) still holds
        with db.transaction() as tx:
            names = tx.all("SELECT application_name FROM pg_stat_activity "
                           "WHERE datname = current_database()")  # fmt: skip
        assert {"application_name": APPLICATION_NAME} in names
    finally:
        w1.close()
    assert not w1.held
    wait_gone(db, "w-1")


def test_a_dropped_lock_connection_is_noticed_and_the_lock_taken_again(db: Database) -> None:
    w1 = lock(db, "w-1")
    try:
        with db.transaction() as tx:
            pid = tx.scalar("SELECT pid FROM pg_stat_activity WHERE application_name = %s "
                            "AND datname = current_database()", (APPLICATION_NAME,))  # fmt: skip
            assert tx.scalar("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        assert w1.wait_held(10)  # again, on a new connection
        with db.transaction() as tx:
            again = tx.scalar("SELECT pid FROM pg_stat_activity WHERE application_name = %s "
                              "AND datname = current_database()", (APPLICATION_NAME,))  # fmt: skip
        assert again != pid
        assert not gone(db, "w-1")
    finally:
        w1.close()


def test_many_claimers_may_ask_about_one_dead_owner_in_open_transactions(db: Database) -> None:
    """The probe is shared: a claimer still inside its transaction does not make the dead
    owner look alive to the next one."""
    with db.transaction() as first:
        assert first.scalar(f"SELECT {owner_gone_sql('%s')}", ("dead",))
        assert gone(db, "dead")


def _row(db: Database) -> int:
    with db.transaction() as tx:
        return enqueue(tx, DISPATCH_TOPIC, {"sessionUid": "x"})


def test_a_row_held_by_a_dead_worker_is_claimed_at_once(db: Database) -> None:
    row = _row(db)
    victim = lock(db, "victim")
    survivor = lock(db, "survivor")
    try:
        held_by_victim = PostgresBroker(db, visibility_seconds=60, owner="victim")
        other = PostgresBroker(db, visibility_seconds=60, owner="survivor")
        assert [d.id for d in held_by_victim.claim((DISPATCH_TOPIC,), 5)[0]] == [str(row)]
        assert other.claim((DISPATCH_TOPIC,), 5)[0] == []  # its holder lives
        victim.close()
        wait_gone(db, "victim")
        again, _ = other.claim((DISPATCH_TOPIC,), 5)
        assert [(d.id, d.attempt) for d in again] == [(str(row), 2)]
        with db.transaction() as tx:
            assert tx.scalar("SELECT claimed_by FROM outbox WHERE id = %s", (row,)) == "survivor"
        assert held_by_victim.claim((DISPATCH_TOPIC,), 5)[0] == []  # the survivor lives
    finally:
        victim.close()
        survivor.close()


def test_a_delivery_waiting_on_a_busy_session_returns_when_its_holder_dies(db: Database) -> None:
    row = _row(db)
    holder = lock(db, "holder")
    try:
        broker = PostgresBroker(db, visibility_seconds=60, owner="")
        (delivery,) = broker.claim((DISPATCH_TOPIC,), 1)[0]
        later = datetime.now(UTC) + timedelta(seconds=30)
        with db.transaction() as tx:  # what the worker answers when the session is busy
            _settle_in(tx, delivery, Result.retry(later, holder="holder"))
        assert broker.claim((DISPATCH_TOPIC,), 1)[0] == []  # hidden while the holder lives
        holder.close()
        wait_gone(db, "holder")
        (back,) = broker.claim((DISPATCH_TOPIC,), 1)[0]
        assert isinstance(back, Delivery) and back.id == str(row)
    finally:
        holder.close()
