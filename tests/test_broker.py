"""The embedded PostgreSQL broker: claims, settling, and acknowledging inside the handler's
own transaction."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import samples
from conftest import Api, read_stream, worker_for_tests
from talon.broker import outbox
from talon.broker.base import Condition, Delivery, Result
from talon.broker.outbox import DISPATCH_TOPIC, OUTBOX_CHANNEL
from talon.broker.postgres import PostgresBroker
from talon.store.database import Database
from talon.store.notify import Listener

TOPICS = (DISPATCH_TOPIC,)


def enqueue(db: Database, payload: str) -> None:
    with db.transaction() as tx:
        outbox.enqueue(tx, DISPATCH_TOPIC, {"n": payload})


def queued(db: Database) -> list[dict]:
    with db.transaction() as tx:
        return tx.all("SELECT payload, attempts, available_at > now() AS later FROM outbox")


def run_broker(
    db: Database, handle: Any, *, concurrency: int, idle_wait: float, max_attempts: int = 10
) -> Any:
    """Start a dispatcher; returns a function that stops it."""
    listener = Listener(db.raw_connect, (OUTBOX_CHANNEL,))
    assert listener.wait_ready(10)
    stop = threading.Event()
    broker = PostgresBroker(db, max_attempts=max_attempts)
    thread = threading.Thread(
        target=broker.run, args=(TOPICS, handle, listener, stop),
        kwargs={"concurrency": concurrency, "idle_wait": idle_wait}, daemon=True,
    )  # fmt: skip
    thread.start()

    def halt() -> None:
        stop.set()
        listener.close()
        thread.join(10)
        assert not thread.is_alive()

    return halt


def wait_for(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_an_acknowledgement_in_the_handlers_transaction_commits_with_it(db: Database) -> None:
    enqueue(db, "kept")
    enqueue(db, "done")
    handled: list[str] = []

    def handle(delivery: Delivery) -> Result:
        assert delivery.ack_in is not None
        handled.append(delivery.payload["n"])
        with db.transaction() as tx:
            delivery.ack_in(tx, None)
            if delivery.payload["n"] == "kept":
                raise RuntimeError("the handler's work failed after acknowledging")
        return Result.settled()

    def rows() -> list[dict[str, Any]]:
        with db.transaction() as tx:
            return tx.all(
                "SELECT payload, attempts, available_at > created_at AS retried FROM outbox"
            )

    halt = run_broker(db, handle, concurrency=2, idle_wait=5)
    try:
        # Both handled, and the failure settled (the dispatcher records the retry after the
        # handler raised: stopping before that would catch the row mid-way).
        wait_for(lambda: len(handled) >= 2 and all(r["retried"] for r in rows()), 10)
    finally:
        halt()
    # "done" is gone with its handler's commit; "kept" rolled back with its handler, so it
    # stays queued, to be retried after a backoff (full jitter: possibly a very short one, so
    # it may already have been retried by the time the dispatcher stopped).
    left = rows()
    assert [(r["payload"]["n"], r["retried"]) for r in left] == [("kept", True)]
    assert left[0]["attempts"] >= 1 and "done" in handled


def test_a_conditional_acknowledgement_deletes_only_when_its_condition_holds(
    db: Database,
) -> None:
    """`ack_in(tx, when)`: the database decides, as the statement runs; the handler learns
    after the commit whether it acknowledged."""
    for name in ("when-false", "when-true"):
        enqueue(db, name)
    outcomes: dict[str, bool] = {}

    def handle(delivery: Delivery) -> Result:
        assert delivery.ack_in is not None
        name = delivery.payload["n"]
        with db.transaction() as tx:
            acked = delivery.ack_in(tx, Condition("%s = 'when-true'", (name,)))
        outcomes[name] = acked()
        return Result.settled() if acked() else Result.retry(datetime.now(UTC) + timedelta(hours=1))

    halt = run_broker(db, handle, concurrency=2, idle_wait=5)
    try:
        wait_for(lambda: len(outcomes) == 2, 10)
    finally:
        halt()
    assert outcomes == {"when-false": False, "when-true": True}
    with db.transaction() as tx:
        assert [r["n"] for r in tx.all("SELECT payload->>'n' AS n FROM outbox")] == ["when-false"]


def test_rows_queued_while_handlers_are_busy_are_all_handled_once(db: Database) -> None:
    """Producers keep queueing while a few handlers work: every row is handled exactly once,
    none waits for the idle poll (30 s here: a lost wake-up would show as a stall), and claims
    take several rows at a time."""
    handled: list[str] = []
    lock = threading.Lock()

    def handle(delivery: Delivery) -> Result:
        time.sleep(0.005)
        with lock:
            handled.append(delivery.payload["n"])
        return Result.ack()

    halt = run_broker(db, handle, concurrency=4, idle_wait=30)
    producers = [
        threading.Thread(target=lambda p=p: [enqueue(db, f"{p}-{i}") for i in range(100)])
        for p in range(4)
    ]
    try:
        for producer in producers:
            producer.start()
        for producer in producers:
            producer.join()
        wait_for(lambda: len(handled) == 400, 20)
        time.sleep(0.2)
    finally:
        halt()
    assert sorted(handled) == sorted(f"{p}-{i}" for p in range(4) for i in range(100))
    assert queued(db) == []


def test_a_quiet_queue_wakes_for_each_new_row(db: Database) -> None:
    handled: list[float] = []

    def handle(delivery: Delivery) -> Result:
        handled.append(time.monotonic())
        return Result.ack()

    halt = run_broker(db, handle, concurrency=4, idle_wait=30)
    try:
        for n in range(20):
            time.sleep(0.02)  # the dispatcher goes back to sleep between rows
            started = time.monotonic()
            enqueue(db, str(n))
            wait_for(lambda n=n: len(handled) == n + 1, 5)
            assert handled[-1] - started < 1.0
    finally:
        halt()


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


def test_a_message_posted_to_a_running_worker_is_claimed_in_its_turns_first_transaction(
    api: Api, db: Database, start_worker
) -> None:
    """The notification hands the row out unclaimed: the delivery's claim, the turn's start
    and its knowledge step commit together (no transaction of the dispatcher's own), and the
    final write acknowledges it: two transactions of the worker's for a turn without tools."""
    with db.transaction() as tx:
        tx.execute("CREATE TABLE txlog (what text, xid xid8)")
        tx.execute(
            "CREATE FUNCTION log_tx() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "INSERT INTO txlog VALUES (TG_ARGV[0], pg_current_xact_id()); RETURN NULL; END $$"
        )
        for trigger, event, when, what in (
            ("claimed", "UPDATE OF claimed_until ON outbox", "NEW.claimed_until IS NOT NULL",
             "claimed"),
            ("acked", "DELETE ON outbox", "true", "acked"),
            ("started", "UPDATE OF state ON turns", "NEW.state = 'running'", "started"),
            ("completed", "UPDATE OF state ON turns", "NEW.state = 'completed'", "completed"),
        ):  # fmt: skip
            tx.execute(
                f"CREATE TRIGGER {trigger} AFTER {event} FOR EACH ROW WHEN ({when}) "
                f"EXECUTE FUNCTION log_tx('{what}')"
            )
    items = [samples.namespace("acme"), samples.template("acme"), samples.agent("acme")]
    api.ok("POST", "/v1/apply", json={"items": items})
    base = "/v1/ns/acme/agents/bot/sessions"
    api.ok("POST", base, 201, json={"id": "s1"})
    start_worker()
    time.sleep(1.0)  # its dispatcher has looked at the (empty) queue and waits
    for n in range(3):
        with db.transaction() as tx:
            tx.execute("DELETE FROM txlog")
        api.ok("POST", f"{base}/s1/message", 202, json={"content": f"hello {n}"})
        deadline = time.monotonic() + 20
        while True:
            with db.transaction() as tx:
                log = tx.all("SELECT what, xid::text AS xid FROM txlog ORDER BY what")
            if len(log) == 4 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        xids = {row["what"]: row["xid"] for row in log}
        assert sorted(xids) == ["acked", "claimed", "completed", "started"]
        assert xids["claimed"] == xids["started"]
        assert xids["acked"] == xids["completed"]
        assert queued(db) == []
        # Rows handed out are followed by a claim within the takeover poll (0.5 s): one that
        # runs as the next message commits may take that row itself (its snapshot has it)
        # before the notification is handled, a race the design allows (the row still goes
        # to one handler). The next message waits for it, so the test sees the notified path.
        time.sleep(0.8)


def test_notified_rows_are_handed_out_before_a_claim_already_asked_for() -> None:
    """A claim asked for (a wait that timed out, the takeover poll) does not take the rows
    notified meanwhile: they go out unclaimed first, to be claimed in their turns' first
    transactions, and the claim follows, excluding them. It used to take them in a
    transaction of its own (under load, a message posted in that moment paid for one)."""
    from talon.broker.notified import Hints

    hints = Hints()
    assert hints.take(4)[1:] == ([], True)  # the first look is a claim
    hints.ask_claim()
    hints.rows.extend([(7, "dispatch", {"sessionUid": "a"}), (8, "dispatch", {"sessionUid": "b"})])
    _, rows, claiming = hints.take(1)
    assert [row[0] for row in rows] == [7] and not claiming
    _, rows, claiming = hints.take(4)
    assert [row[0] for row in rows] == [8] and not claiming
    assert hints.take(4)[1:] == ([], True)  # then the claim, once
    assert hints.take(4)[1:] == ([], False)


def test_a_notified_row_goes_to_one_of_two_dispatchers(api: Api, db: Database) -> None:
    """Both dispatchers hear of the row; one handler claims it, the other's claim finds it
    taken and neither settles what it does not hold (the row stays claimed, once)."""
    items = [samples.namespace("acme"), samples.template("acme"), samples.agent("acme")]
    api.ok("POST", "/v1/apply", json={"items": items})
    claims: list[bool] = []
    said: list[bool] = []
    both = threading.Barrier(2, timeout=10)

    def handle(delivery: Delivery) -> Result:
        assert delivery.claim_in is not None  # handed out unclaimed
        both.wait()  # both handlers have the row before either claims it
        with db.transaction() as tx:
            claim = delivery.claim_in(tx)  # its statement goes first with the next one
            took = tx.scalar(f"SELECT {claim.took.sql}", claim.took.params)
            claims.append(claim.taken())
            said.append(took)  # what the transaction's later statements see
        # The holder hands it back for later (beyond the test); the other must not touch it.
        return Result.retry(datetime.now(UTC) + timedelta(minutes=5))

    halts = [run_broker(db, handle, concurrency=2, idle_wait=30) for _ in range(2)]
    try:
        time.sleep(0.5)
        _post(api, "s1", "hello")
        wait_for(lambda: len(claims) == 2, 10)
        time.sleep(0.2)  # both settled
    finally:
        for halt in halts:
            halt()
    assert sorted(claims) == [False, True]
    assert said == claims
    with db.transaction() as tx:
        (row,) = tx.all("SELECT attempts, available_at > created_at AS retried FROM outbox")
    assert row["attempts"] == 1 and row["retried"]  # claimed once, handed back by its holder


def test_handlers_without_a_database_queue_get_no_transactional_ack(api: Api, db: Database) -> None:
    """A Pub/Sub push delivery has no `ack_in`: the worker answers a plain ack."""
    items = [samples.namespace("acme"), samples.template("acme"), samples.agent("acme")]
    api.ok("POST", "/v1/apply", json={"items": items})
    base = "/v1/ns/acme/agents/bot/sessions"
    api.ok("POST", base, 201, json={"id": "s1"})
    api.ok("POST", f"{base}/s1/message", 202, json={"content": "hello"})
    with db.transaction() as tx:
        uid = tx.scalar("SELECT uid::text FROM sessions WHERE id = 's1'")
    result = worker_for_tests(db).handle(Delivery("m-1", DISPATCH_TOPIC, {"sessionUid": uid}, 1))
    assert result.outcome == "ack"
    messages = api.ok("GET", f"{base}/s1/messages")["items"]
    assert [m["role"] for m in messages] == ["user", "assistant"]


def _post(api: Api, session: str, content: str) -> dict[str, Any]:
    base = "/v1/ns/acme/agents/bot/sessions"
    if api.get(f"{base}/{session}").status_code == 404:
        api.ok("POST", base, 201, json={"id": session})
    return api.ok("POST", f"{base}/{session}/message", 202, json={"content": content})


def test_a_row_that_keeps_failing_is_dead_and_its_turn_fails_with_the_reason(
    api: Api, db: Database
) -> None:
    """Rows used to be retried forever. After max_attempts claims the worker gets the row as
    a dead letter (it fails the turn, the reason in the stream) and the row is kept, dead."""
    items = [samples.namespace("acme"), samples.template("acme"), samples.agent("acme")]
    api.ok("POST", "/v1/apply", json={"items": items})
    accepted = _post(api, "s1", "never handled")
    worker = worker_for_tests(db)
    seen: list[tuple[int, bool]] = []

    def handle(delivery: Delivery) -> Result:
        seen.append((delivery.attempt, delivery.dead_lettered))
        if not delivery.dead_lettered:
            raise RuntimeError("a handler that keeps failing")
        return worker.handle(delivery)

    halt = run_broker(db, handle, concurrency=1, idle_wait=0.2, max_attempts=3)
    try:
        wait_for(lambda: (True in dict(seen).values()) and _dead_rows(db), 30)
    finally:
        halt()
    assert seen == [(1, False), (2, False), (3, False), (3, True)]
    assert _dead_rows(db) == [accepted["turnId"]]
    base = "/v1/ns/acme/agents/bot/sessions/s1"
    turn = api.ok("GET", f"{base}/turns/{accepted['turnId']}")
    assert turn["state"] == "failed" and turn["error"]["code"] == "dead_lettered"
    events = read_stream(api, f"{base}/stream", last_event_id=0, params={"untilTurnEnd": "true"})
    failed = [e for e in events if e["type"] == "turn.failed"]
    assert [(e["turnId"], e["data"]["code"]) for e in failed] == [
        (accepted["turnId"], "dead_lettered")
    ]
    assert "failed 3 deliveries and was dead-lettered" in failed[0]["data"]["message"]
    # A later message on the session runs normally.
    _post(api, "s1", "after the dead one")
    halt = run_broker(db, worker.handle, concurrency=1, idle_wait=0.2)
    try:
        wait_for(lambda: len(api.ok("GET", f"{base}/messages")["items"]) == 3, 30)
    finally:
        halt()


def _dead_rows(db: Database) -> list[str]:
    with db.transaction() as tx:
        rows = tx.all("SELECT payload->>'turnId' AS turn FROM outbox WHERE dead_at IS NOT NULL")
    return [row["turn"] for row in rows]


def test_a_dead_letter_fails_nothing_while_a_live_worker_drives_the_session(
    api: Api, db: Database
) -> None:
    """An event can run out of deliveries by finding its session busy each time (a long
    turn): the live worker holding the session runs every open turn, so nothing is failed,
    and each event is queued again with a fresh count, so that no turn is left without a
    delivery should that worker die later."""
    from talon.runtime.claim import Claim, ClaimOptions, claim
    from talon.store.liveness import OwnerLock

    items = [samples.namespace("acme"), samples.template("acme"), samples.agent("acme")]
    api.ok("POST", "/v1/apply", json={"items": items})
    first = _post(api, "s1", "running long")
    second = _post(api, "s1", "queued behind")
    with db.transaction() as tx:
        uid = tx.scalar("SELECT uid FROM sessions WHERE id = 's1'")
        before = tx.scalar("SELECT max(id) FROM outbox")
    alive = OwnerLock(db.raw_connect, "another-worker")
    try:
        assert alive.wait_held(10)
        held = claim(db, uid, ClaimOptions("another-worker", 30.0, 5))
        assert isinstance(held, Claim)
        worker = worker_for_tests(db)
        for accepted in (first, second):
            payload = {"sessionUid": str(uid), "turnId": accepted["turnId"]}
            dead = Delivery("m", DISPATCH_TOPIC, payload, 10, dead_lettered=True)
            assert worker.handle(dead).outcome == "ack"
    finally:
        alive.close()
    base = "/v1/ns/acme/agents/bot/sessions/s1"
    states = [api.ok("GET", f"{base}/turns/{a['turnId']}")["state"] for a in (first, second)]
    assert states == ["running", "queued"]
    assert _fresh_events(db, before) == [first["turnId"], second["turnId"]]


def test_a_dead_letter_for_a_session_whose_worker_died_fails_its_turn_and_frees_the_rest(
    api: Api, db: Database
) -> None:
    """The worker holding the session died (no liveness lock, lease not yet expired): the
    event's turn is failed, and the turn behind it gets a fresh event, so it runs."""
    from talon.runtime.claim import Claim, ClaimOptions, claim

    items = [samples.namespace("acme"), samples.template("acme"), samples.agent("acme")]
    api.ok("POST", "/v1/apply", json={"items": items})
    first = _post(api, "s1", "its worker died")
    second = _post(api, "s1", "queued behind")
    with db.transaction() as tx:
        uid = tx.scalar("SELECT uid FROM sessions WHERE id = 's1'")
        before = tx.scalar("SELECT max(id) FROM outbox")
    assert isinstance(claim(db, uid, ClaimOptions("a-worker-that-died", 30.0, 5)), Claim)
    payload = {"sessionUid": str(uid), "turnId": first["turnId"]}
    dead = Delivery("m", DISPATCH_TOPIC, payload, 10, dead_lettered=True)
    assert worker_for_tests(db).handle(dead).outcome == "ack"
    base = "/v1/ns/acme/agents/bot/sessions/s1"
    failed = api.ok("GET", f"{base}/turns/{first['turnId']}")
    assert failed["state"] == "failed" and failed["error"]["code"] == "dead_lettered"
    assert api.ok("GET", f"{base}/turns/{second['turnId']}")["state"] == "queued"
    assert _fresh_events(db, before) == [second["turnId"]]


def _fresh_events(db: Database, after_id: int) -> list[str]:
    with db.transaction() as tx:
        rows = tx.all(
            "SELECT payload->>'turnId' AS turn FROM outbox WHERE id > %s AND topic = %s "
            "ORDER BY id",
            (after_id, DISPATCH_TOPIC),
        )
    return [row["turn"] for row in rows]


def test_a_turn_is_claimed_only_with_the_delivery_that_named_it(api: Api, db: Database) -> None:
    """A notified row's claim travels with the turn's claim, in one round trip, and the
    turn's claim depends on it: when another consumer took the row first, the turn is not
    claimed nor started (it stays queued, its attempts and fencing token untouched, no
    event); when nobody had, both hold."""
    from talon.broker.postgres import _Unclaimed
    from talon.runtime.claim import Claim, ClaimOptions, NotTaken, claim

    items = [samples.namespace("acme"), samples.template("acme"), samples.agent("acme")]
    api.ok("POST", "/v1/apply", json={"items": items})
    _post(api, "s1", "hello")
    with db.transaction() as tx:
        row_id = tx.scalar("SELECT id FROM outbox WHERE topic = %s", (DISPATCH_TOPIC,))
        uid = tx.scalar("SELECT uid FROM sessions WHERE id = %s", ("s1",))
    broker = PostgresBroker(db)
    options = ClaimOptions("worker-b", 30.0, 5)

    def unclaimed() -> _Unclaimed:
        return _Unclaimed(broker, row_id, set(), threading.Condition())

    other = unclaimed()
    with db.transaction() as tx:  # another consumer's handler takes the row first
        taking = other(tx)
        tx.scalar("SELECT %s::int", (1,))
        assert taking.taken()
    mine = unclaimed()
    assert isinstance(claim(db, uid, options, mine), NotTaken)
    assert mine.taken is False
    turn = "SELECT state, attempts, fencing_token, lease_owner FROM turns"
    with db.transaction() as tx:
        assert tx.all(turn) == [
            {"state": "queued", "attempts": 0, "fencing_token": 0, "lease_owner": None}
        ]
        assert tx.scalar("SELECT count(*) FROM turn_steps") == 0
        assert tx.scalar("SELECT count(*) FROM session_events WHERE type LIKE 'step.%'") == 0
        before = tx.scalar("SELECT last_event_id FROM sessions")
        tx.execute("UPDATE outbox SET attempts = 0, claimed_until = NULL, claimed_by = NULL")
    mine = unclaimed()  # nobody holds it now
    assert isinstance(claim(db, uid, options, mine), Claim)
    assert mine.taken is True
    with db.transaction() as tx:
        (claimed,) = tx.all(turn)
        assert (claimed["state"], claimed["attempts"]) == ("running", 1)
        assert tx.scalar("SELECT claimed_by IS NULL AND attempts = 1 FROM outbox") is True
        started = tx.all("SELECT type FROM session_events WHERE id > %s ORDER BY id", (before,))
        assert [row["type"] for row in started] == [
            "turn.started", "step.started", "step.completed", "step.started"
        ]  # fmt: skip
