"""The embedded PostgreSQL broker: claims, settling, and acknowledging inside the handler's
own transaction."""

from __future__ import annotations

import time

import samples
from conftest import Api
from talon.broker.base import Delivery, Result
from talon.broker.outbox import DISPATCH_TOPIC, OUTBOX_CHANNEL
from talon.broker.postgres import PostgresBroker
from talon.runtime.worker import Worker
from talon.store.database import Database
from talon.store.notify import Listener

TOPICS = (DISPATCH_TOPIC,)


def enqueue(db: Database, payload: str) -> None:
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO outbox (topic, key, payload) VALUES (%s, 'k', "
            "jsonb_build_object('n', %s::text))",
            (DISPATCH_TOPIC, payload),
        )


def queued(db: Database) -> list[dict]:
    with db.transaction() as tx:
        return tx.all("SELECT payload, attempts, available_at > now() AS later FROM outbox")


def test_an_acknowledgement_in_the_handlers_transaction_commits_with_it(db: Database) -> None:
    broker = PostgresBroker(db)
    enqueue(db, "kept")
    enqueue(db, "done")

    def handle(delivery: Delivery) -> Result:
        assert delivery.ack_in is not None
        with db.transaction() as tx:
            delivery.ack_in(tx)
            if delivery.payload["n"] == "kept":
                raise RuntimeError("the handler's work failed after acknowledging")
        return Result.settled()

    listener = Listener(db.raw_connect, (OUTBOX_CHANNEL,))
    listener.wait_ready(10)
    try:
        for _ in range(2):
            broker._step(TOPICS, handle, listener, idle_wait=0.1)
    finally:
        listener.close()
    # "done" is gone with its handler's commit; "kept" rolled back with its handler, so it
    # stays queued, to be retried after a backoff.
    rows = queued(db)
    assert [(r["payload"]["n"], r["attempts"], r["later"]) for r in rows] == [("kept", 1, True)]


def test_a_turn_acknowledges_its_delivery_in_its_final_write(
    api: Api, db: Database, start_worker
) -> None:
    """Triggers record the transaction that completes the turn and the one that deletes its
    dispatch row: they are the same."""
    with db.transaction() as tx:
        tx.execute("CREATE TABLE txlog (what text, xid xid8)")
        tx.execute(
            "CREATE FUNCTION log_tx() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "INSERT INTO txlog VALUES (TG_ARGV[0], pg_current_xact_id()); RETURN NULL; END $$"
        )
        tx.execute(
            "CREATE TRIGGER outbox_deleted AFTER DELETE ON outbox "
            "FOR EACH ROW EXECUTE FUNCTION log_tx('ack')"
        )
        tx.execute(
            "CREATE TRIGGER turn_completed AFTER UPDATE OF state ON turns FOR EACH ROW "
            "WHEN (NEW.state = 'completed') EXECUTE FUNCTION log_tx('completed')"
        )
    items = [samples.namespace("acme"), samples.template("acme"), samples.agent("acme")]
    api.ok("POST", "/v1/apply", json={"items": items})
    base = "/v1/ns/acme/agents/bot/sessions"
    api.ok("POST", base, 201, json={"id": "s1"})
    api.ok("POST", f"{base}/s1/message", 202, json={"content": "hello"})
    start_worker()
    deadline = time.monotonic() + 20
    while True:
        with db.transaction() as tx:
            log = tx.all("SELECT what, xid::text AS xid FROM txlog ORDER BY what")
        if len(log) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [row["what"] for row in log] == ["ack", "completed"]
    assert log[0]["xid"] == log[1]["xid"]
    assert queued(db) == []


def test_handlers_without_a_database_queue_get_no_transactional_ack(api: Api, db: Database) -> None:
    """A Pub/Sub push delivery has no `ack_in`: the worker answers a plain ack."""
    items = [samples.namespace("acme"), samples.template("acme"), samples.agent("acme")]
    api.ok("POST", "/v1/apply", json={"items": items})
    base = "/v1/ns/acme/agents/bot/sessions"
    api.ok("POST", base, 201, json={"id": "s1"})
    api.ok("POST", f"{base}/s1/message", 202, json={"content": "hello"})
    with db.transaction() as tx:
        uid = tx.scalar("SELECT uid::text FROM sessions WHERE id = 's1'")
    result = Worker(db).handle(Delivery("m-1", DISPATCH_TOPIC, {"sessionUid": uid}, 1))
    assert result.outcome == "ack"
    messages = api.ok("GET", f"{base}/s1/messages")["items"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
