"""The LISTEN/NOTIFY listener against a real PostgreSQL: notifications read straight off the
socket, wake-up tokens, keyed inboxes, reconnects and shutdown."""

from __future__ import annotations

import threading
import time

from conftest import raw_connection
from talon.store.notify import MAX_INBOX, Listener

CHANNEL = "talon_test_channel"


def notify(url: str, *payloads: str) -> None:
    """Send the payloads in one transaction (delivered together, in order, on commit)."""
    connection = raw_connection(url)
    try:
        cursor = connection.cursor()
        for payload in payloads:
            cursor.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
        connection.commit()
    finally:
        connection.close()


def listener_for(url: str) -> Listener:
    listener = Listener(lambda: raw_connection(url), (CHANNEL,))
    assert listener.wait_ready(10)
    return listener


def test_inbox_gets_payloads_for_its_key_in_order(database_url: str) -> None:
    listener = listener_for(database_url)
    try:
        with listener.subscribe(CHANNEL, "acme/s1") as mine, \
                listener.subscribe(CHANNEL, "acme/s2") as other:  # fmt: skip
            # Non-ASCII payloads survive (pg8000 itself would decode them as ASCII).
            notify(database_url, "acme/s1 uid [1]", "acme/s2 uid [9]", 'acme/s1 uid [2, "é"]')
            notify(database_url, "acme/s1")
            received: list[str | None] = []
            deadline = time.monotonic() + 5
            while len(received) < 3 and time.monotonic() < deadline:
                received += mine.get(1)
            assert received == ["uid [1]", 'uid [2, "é"]', None]
            assert other.get(1) == ["uid [9]"]
        assert listener.subscribers() == 0
    finally:
        listener.close()


def test_a_waiter_that_noted_the_count_misses_nothing(database_url: str) -> None:
    listener = listener_for(database_url)
    try:
        seen = listener.notified(CHANNEL)
        assert not listener.wait_beyond(CHANNEL, seen, 0.2)
        notify(database_url, "a", "b")
        # Arrived before the wait started: still seen, because the count was noted first.
        time.sleep(0.3)
        assert listener.wait_beyond(CHANNEL, seen, 0)
        assert listener.notified(CHANNEL) == seen + 2
    finally:
        listener.close()


def test_a_lost_connection_reconnects_and_tells_every_inbox(database_url: str) -> None:
    listener = listener_for(database_url)
    try:
        with listener.subscribe(CHANNEL, "k") as inbox:
            admin = raw_connection(database_url)
            admin.autocommit = True
            cursor = admin.cursor()
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN%%' AND datname = current_database()"
            )
            admin.close()
            assert inbox.get(10) == [None]  # reconnected: read the table, something was missed
            assert listener.wait_ready(10)
            notify(database_url, "k x")
            assert inbox.get(5) == ["x"]
    finally:
        listener.close()


def test_a_reader_that_falls_behind_is_told_to_read(database_url: str) -> None:
    listener = listener_for(database_url)
    try:
        with listener.subscribe(CHANNEL, "k") as inbox:
            seen = listener.notified(CHANNEL)
            notify(database_url, *[f"k {n}" for n in range(MAX_INBOX + 5)])
            deadline = time.monotonic() + 10
            while listener.notified(CHANNEL) < seen + MAX_INBOX + 5:  # inboxes fill first
                assert time.monotonic() < deadline
                listener.wait_beyond(CHANNEL, listener.notified(CHANNEL), 0.1)
            # The overflowing item became "read the table"; the rest follow it.
            assert inbox.get(1) == [None] + [f"{n}" for n in range(MAX_INBOX + 1, MAX_INBOX + 5)]
    finally:
        listener.close()


def test_close_returns_promptly_while_the_reader_blocks(database_url: str) -> None:
    listener = listener_for(database_url)
    started = time.monotonic()
    closer = threading.Thread(target=listener.close)
    closer.start()
    closer.join(10)
    assert not closer.is_alive()
    assert time.monotonic() - started < 5


def test_an_inbox_can_call_back_instead_of_being_waited_on(database_url: str) -> None:
    """What talon.serve's stream hub relies on: a callback per arriving item (and at once
    for items already waiting), `wait` leaving the items for `get`, and no call after the
    callback is removed."""
    listener = listener_for(database_url)
    try:
        with listener.subscribe(CHANNEL, "acme/s1") as inbox:
            notify(database_url, "acme/s1 uid [1]")
            assert inbox.wait(5)  # an item waits...
            assert inbox.wait(0)  # ...and is still there
            calls: list[int] = []
            inbox.on_item(lambda: calls.append(1))
            assert calls == [1]  # called at once: an item was waiting
            notify(database_url, "acme/s1 uid [2]", "acme/s1 uid [3]")
            deadline = time.monotonic() + 5
            while len(calls) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert calls == [1, 1, 1]
            assert inbox.get(0) == ["uid [1]", "uid [2]", "uid [3]"]
            assert not inbox.wait(0.05)
            inbox.on_item(None)
            notify(database_url, "acme/s1 uid [4]")
            assert inbox.wait(5)
            assert calls == [1, 1, 1]
    finally:
        listener.close()
