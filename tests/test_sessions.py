"""Sessions over HTTP: named sessions, messages, turns run by a worker, SSE with replay,
idempotency and multitask strategies."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

import samples
from conftest import Api, raw_connection, read_stream, row_counts
from talon.sessions.events import Event
from talon.store.database import Database

NS = "acme"
BASE = f"/v1/ns/{NS}/agents/bot/sessions"


@pytest.fixture
def acme_bot(api: Api) -> Api:
    items = [samples.namespace(NS), samples.template(NS), samples.agent(NS)]
    api.ok("POST", "/v1/apply", json={"items": items})
    return api


def post(api: Api, session: str, content: str, **extra: Any) -> dict[str, Any]:
    headers = extra.pop("headers", {})
    response = api.post(f"{BASE}/{session}/message", json={"content": content, **extra},
                        headers=headers)  # fmt: skip
    assert response.status_code in (200, 202), response.text
    return response.json()


def wait_idle(api: Api, session: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = api.ok("GET", f"{BASE}/{session}")
        if view["activeTurn"] is None:
            return view
        time.sleep(0.05)
    raise AssertionError(f"session {session} still busy: {view}")


def test_named_session_create_is_idempotent_per_agent(acme_bot: Api) -> None:
    body = {"id": "enterprise-renewals", "metadata": {"owner": "revenue-ops"}}
    created = acme_bot.post(BASE, json=body)
    assert created.status_code == 201
    view = created.json()
    assert {k: view[k] for k in ("id", "agent", "ns", "status", "metadata")} == {
        "id": "enterprise-renewals", "agent": "bot", "ns": NS, "status": "active",
        "metadata": {"owner": "revenue-ops"},
    }  # fmt: skip
    assert view["messages"] == [] and view["stream"] == []
    again = acme_bot.post(BASE, json=body)
    assert again.status_code == 200 and again.json()["createdAt"] == view["createdAt"]
    acme_bot.ok("POST", f"/v1/ns/{NS}/agents", 201, json=samples.agent(NS, "other"))
    clash = acme_bot.post(f"/v1/ns/{NS}/agents/other/sessions", json=body)
    assert clash.status_code == 409
    assert clash.json()["error"]["details"] == [{"path": "id", "message": "belongs to agent 'bot'"}]
    # The session is not visible under the other agent.
    assert acme_bot.get(f"/v1/ns/{NS}/agents/other/sessions/enterprise-renewals").status_code == 404


def test_session_ids_and_bodies_are_validated(acme_bot: Api) -> None:
    bad = acme_bot.post(BASE, json={"id": "has space"})
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["path"] == "id"
    unknown = acme_bot.post(BASE, json={"id": "ok", "colour": "red"})
    assert unknown.status_code == 422
    generated = acme_bot.ok("POST", BASE, 201)  # no body: a generated id
    assert generated["id"].startswith("s-")
    missing_agent = acme_bot.post(f"/v1/ns/{NS}/agents/ghost/sessions", json={})
    assert missing_agent.status_code == 404
    assert "Agent 'ghost' not found" in missing_agent.json()["error"]["message"]


def test_list_get_delete(acme_bot: Api) -> None:
    for name in ("a", "b", "c"):
        acme_bot.ok("POST", BASE, 201, json={"id": name})
    first = acme_bot.ok("GET", BASE, params={"limit": 2})
    assert [s["id"] for s in first["items"]] == ["a", "b"]
    second = acme_bot.ok("GET", BASE, params={"limit": 2, "pageToken": first["nextPageToken"]})
    assert [s["id"] for s in second["items"]] == ["c"] and second["nextPageToken"] is None
    deleted = acme_bot.ok("DELETE", f"{BASE}/b")
    assert deleted["id"] == "b"
    assert acme_bot.get(f"{BASE}/b").status_code == 404


def test_deleting_a_session_deletes_everything_it_held(
    acme_bot: Api, db: Database, start_worker
) -> None:
    """No foreign key cascades from a session to its messages, turns and events (migration
    0015): the deletion removes them, and a session created again under the name starts
    empty, whatever the old one had written."""
    start_worker()
    acme_bot.ok("POST", BASE, 201, json={"id": "gone"})
    acme_bot.ok("POST", BASE, 201, json={"id": "kept"})
    for session in ("gone", "kept"):
        post(acme_bot, session, "hello")
        wait_idle(acme_bot, session)
    post(acme_bot, "gone", "queued behind nothing, and deleted with its session")

    def held() -> dict[str, list[int]]:
        with db.transaction() as tx:
            rows = tx.all(
                "SELECT s.id, (SELECT count(*) FROM messages WHERE session_uid = s.uid) AS m, "
                "(SELECT count(*) FROM turns WHERE session_uid = s.uid) AS t, "
                "(SELECT count(*) FROM session_events WHERE session_uid = s.uid) AS e "
                "FROM sessions s WHERE s.id IN ('gone', 'kept')"
            )
            orphans = tx.scalar(
                "SELECT (SELECT count(*) FROM messages m WHERE NOT EXISTS (SELECT 1 FROM "
                "sessions s WHERE s.uid = m.session_uid)) + (SELECT count(*) FROM turns t "
                "WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.uid = t.session_uid)) + "
                "(SELECT count(*) FROM session_events e WHERE NOT EXISTS (SELECT 1 FROM "
                "sessions s WHERE s.uid = e.session_uid)) + (SELECT count(*) FROM turn_steps "
                "p WHERE NOT EXISTS (SELECT 1 FROM turns t WHERE t.id = p.turn_id))"
            )
        return {r["id"]: [r["m"], r["t"], r["e"]] for r in rows} | {"orphans": [orphans]}

    before = held()
    assert before["gone"][0] >= 3 and before["gone"][1] == 2 and before["gone"][2] > 4
    acme_bot.ok("DELETE", f"{BASE}/gone")
    assert held() == {"kept": before["kept"], "orphans": [0]}
    acme_bot.ok("POST", BASE, 201, json={"id": "gone"})
    assert acme_bot.ok("GET", f"{BASE}/gone")["messageCount"] == 0
    assert held()["gone"] == [0, 0, 0]


def test_a_message_waiting_behind_its_sessions_deletion_writes_nothing(
    acme_bot: Api, db: Database
) -> None:
    """A post that waits for the session's lock while the session is being deleted finds it
    gone once the deletion commits: a 404, and no message, turn or event of it left behind
    (nothing but the statement itself ties those rows to the session, migration 0015)."""
    import threading

    acme_bot.ok("POST", BASE, 201, json={"id": "doomed"})
    answers: list[int] = []
    poster = threading.Thread(target=lambda: answers.append(
        acme_bot.post(f"{BASE}/doomed/message", json={"content": "hi"},
                      headers={"Idempotency-Key": "k1"}).status_code))  # fmt: skip
    with db.transaction() as tx:
        uid = tx.scalar("SELECT uid FROM sessions WHERE id = 'doomed' FOR UPDATE")
        poster.start()
        assert _waiting_for_session_locks(db, 1) == 1
        tx.execute("DELETE FROM sessions WHERE uid = %s", (uid,))
    poster.join(10)
    assert answers == [404]
    tables = ["messages", "turns", "session_events"]
    assert row_counts(db, tables, uid) == dict.fromkeys(tables, 0)


def _waiting_for_session_locks(db: Database, count: int) -> int:
    """How many statements wait for a row lock (`FOR UPDATE`), once `count` do or after 10 s."""
    deadline = time.monotonic() + 10
    while True:
        with db.transaction() as look:
            waiting = int(look.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = %s "
                "AND query LIKE %s", ("Lock", "%FOR UPDATE%"),
            ))  # fmt: skip
        if waiting >= count or time.monotonic() > deadline:
            return waiting
        time.sleep(0.02)


def test_message_is_committed_before_202_and_runs_once(acme_bot: Api, start_worker) -> None:
    acme_bot.ok("POST", BASE, 201, json={"id": "s1"})
    accepted = acme_bot.post(f"{BASE}/s1/message", json={"content": "Review renewals."})
    assert accepted.status_code == 202
    turn = accepted.json()
    assert turn["state"] == "queued" and turn["messageSeq"] == 1
    # Durable before any worker exists: the message and the queued turn are readable.
    view = acme_bot.ok("GET", f"{BASE}/s1")
    assert view["messages"] == [{"role": "user", "content": "Review renewals."}]
    assert view["activeTurn"]["id"] == turn["turnId"] and view["activeTurn"]["state"] == "queued"

    start_worker()
    events = read_stream(acme_bot, f"{BASE}/s1/stream", last_event_id=turn["streamFrom"],
                         params={"untilTurnEnd": "true"})  # fmt: skip
    kinds = [(e["type"], e["data"].get("step")) for e in events]
    assert kinds == [
        ("message.created", None),
        ("turn.queued", None),
        ("turn.started", None),
        ("step.started", "load-knowledge"),
        ("step.completed", "load-knowledge"),
        ("step.started", "call-model"),
        ("step.completed", "call-model"),
        ("step.started", "write-next-message"),
        ("message.created", None),
        ("step.completed", "write-next-message"),
        ("turn.completed", None),
    ]
    assert [e["id"] for e in events] == list(range(1, 12))
    assert events[-1]["data"]["provider"] == "primary/demo:echo"
    final = wait_idle(acme_bot, "s1")
    answer = {"role": "assistant", "content": "(demo model) Received: Review renewals."}
    assert final["messages"][1] == answer
    assert [s["step"] for s in final["stream"]] == [
        "load-knowledge", "call-model", "write-next-message"
    ]  # fmt: skip
    detail = acme_bot.ok("GET", f"{BASE}/s1/turns/{turn['turnId']}")
    assert detail["state"] == "completed" and detail["attempts"] == 1
    assert detail["provider"] == "primary/demo:echo"


def test_messages_are_paginated_oldest_first(acme_bot: Api, start_worker) -> None:
    start_worker()
    acme_bot.ok("POST", BASE, 201, json={"id": "s1"})
    for i in range(3):
        post(acme_bot, "s1", f"message {i}")
        wait_idle(acme_bot, "s1")
    page = acme_bot.ok("GET", f"{BASE}/s1/messages", params={"limit": 4})
    assert [m["seq"] for m in page["items"]] == [1, 2, 3, 4]
    assert [m["role"] for m in page["items"]] == ["user", "assistant", "user", "assistant"]
    rest = acme_bot.ok("GET", f"{BASE}/s1/messages", params={"after": page["nextAfter"]})
    assert [m["content"] for m in rest["items"]] == [
        "message 2", "(demo model) Received: message 2"
    ]  # fmt: skip
    assert rest["nextAfter"] is None
    bad = acme_bot.get(f"{BASE}/s1/messages", params={"after": -1})
    assert bad.status_code == 400


def test_bad_messages(acme_bot: Api) -> None:
    acme_bot.ok("POST", BASE, 201, json={"id": "s1"})
    for body, path in [
        ({}, "content"),
        ({"content": "  "}, "content"),
        ({"content": "x", "multitask_strategy": "shout"}, "multitask_strategy"),
        ({"content": "x" * 100_001}, "content"),
    ]:
        response = acme_bot.post(f"{BASE}/s1/message", json=body)
        assert response.status_code in (413, 422), (body, response.status_code)
        if response.status_code == 422:
            assert response.json()["error"]["details"][0]["path"] == path
    assert acme_bot.post(f"{BASE}/nope/message", json={"content": "x"}).status_code == 404
    assert acme_bot.ok("GET", f"{BASE}/s1")["messageCount"] == 0


def test_idempotency_key_makes_retries_safe(acme_bot: Api) -> None:
    acme_bot.ok("POST", BASE, 201, json={"id": "s1"})
    headers = {"Idempotency-Key": "retry-1"}
    first = acme_bot.post(f"{BASE}/s1/message", json={"content": "hi"}, headers=headers)
    second = acme_bot.post(f"{BASE}/s1/message", json={"content": "hi"}, headers=headers)
    assert (first.status_code, second.status_code) == (202, 200)
    assert first.json()["turnId"] == second.json()["turnId"]
    assert first.json()["streamFrom"] == second.json()["streamFrom"]
    other = acme_bot.post(f"{BASE}/s1/message", json={"content": "bye"}, headers=headers)
    assert other.status_code == 422
    assert other.json()["error"]["details"][0]["path"] == "Idempotency-Key"
    assert acme_bot.ok("GET", f"{BASE}/s1")["messageCount"] == 1


def test_a_retried_key_finds_its_turn_within_its_session(db: Database) -> None:
    """The lookup behind a retried Idempotency-Key reads the session's own events, never
    the whole event table (which grows with every session's history)."""
    from talon.sessions.posting import _REPLAY_SQL

    with db.transaction() as tx:
        tx.execute("SET LOCAL enable_seqscan = off")  # a scan is then chosen only if forced
        plan = "\n".join(
            row["QUERY PLAN"] for row in tx.all("EXPLAIN " + _REPLAY_SQL, ("acme", "s1", "retry-1"))
        )
    assert "Seq Scan on session_events" not in plan, plan
    assert "session_events_pkey" in plan, plan


def test_a_retry_answers_where_its_turn_started_without_reading_the_events(
    acme_bot: Api, db: Database
) -> None:
    """Where a turn's events start is written with the turn, so a retried key answers with
    it whatever the session's length; a turn queued before that column existed (NULL) is
    still found from its events."""
    acme_bot.ok("POST", BASE, 201, json={"id": "s1"})
    first = post(acme_bot, "s1", "one", headers={"Idempotency-Key": "k-1"})
    post(acme_bot, "s1", "two")
    with db.transaction() as tx:
        stored = tx.scalar("SELECT stream_from FROM turns WHERE id = %s", (first["turnId"],))
        # The stored value is what the retry answers: move it, and the answer moves with it.
        tx.execute("UPDATE turns SET stream_from = stream_from + 100 WHERE id = %s",
                   (first["turnId"],))  # fmt: skip
    assert stored == first["streamFrom"]
    retried = post(acme_bot, "s1", "one", headers={"Idempotency-Key": "k-1"})
    assert retried["streamFrom"] == first["streamFrom"] + 100
    with db.transaction() as tx:
        tx.execute("UPDATE turns SET stream_from = NULL WHERE id = %s", (first["turnId"],))
    legacy = post(acme_bot, "s1", "one", headers={"Idempotency-Key": "k-1"})
    assert legacy["turnId"] == first["turnId"] and legacy["streamFrom"] == first["streamFrom"]


def test_concurrent_retries_with_one_idempotency_key_queue_one_turn(
    acme_bot: Api, db: Database
) -> None:
    """Requests with the same key racing each other: the one that takes the session's lock
    first queues the turn, and each other one, whose statement began before that turn was
    committed, is refused by the (session, key) unique index once it has the lock, writes
    nothing, and answers with that turn (not a conflict, not a second turn). The session row
    is held locked here until all of them wait for it."""
    import threading

    acme_bot.ok("POST", BASE, 201, json={"id": "s1"})
    headers = {"Idempotency-Key": "race-1"}
    answers: list[tuple[int, str]] = []

    def send() -> None:
        response = acme_bot.post(f"{BASE}/s1/message", json={"content": "hi"}, headers=headers)
        answers.append((response.status_code, response.json().get("turnId", "")))

    threads = [threading.Thread(target=send) for _ in range(4)]
    with db.transaction() as tx:
        tx.one("SELECT uid FROM sessions WHERE id = %s FOR UPDATE", ("s1",))
        for thread in threads:
            thread.start()
        assert _waiting_for_session_locks(db, len(threads)) == len(threads)
    for thread in threads:
        thread.join()
    assert sorted(code for code, _ in answers) == [200] * 3 + [202]
    assert len({turn for _, turn in answers}) == 1
    assert acme_bot.ok("GET", f"{BASE}/s1")["messageCount"] == 1


def test_a_message_for_another_agents_session_writes_nothing(acme_bot: Api, db: Database) -> None:
    """The queueing travels with the session's lock, before the gateway has seen who owns the
    session: it must write nothing itself when the session is another agent's (with or
    without an Idempotency-Key), not leave it to the 404 that follows its COMMIT."""
    acme_bot.ok("POST", "/v1/apply", json={"items": [samples.agent(NS, "other")]})
    acme_bot.ok("POST", BASE, 201, json={"id": "s1"})
    other = f"/v1/ns/{NS}/agents/other/sessions/s1/message"
    for headers in ({}, {"Idempotency-Key": "k-1"}):
        response = acme_bot.post(other, json={"content": "hi"}, headers=headers)
        assert response.status_code == 404, response.text
        assert "not found for agent 'other'" in response.json()["error"]["message"]
    assert acme_bot.post(f"/v1/ns/{NS}/agents/ghost/sessions/s1/message",
                         json={"content": "hi"}).status_code == 404  # fmt: skip
    # A session of the same id and agent name in another namespace is not this one.
    items = [samples.namespace("globex"), samples.template("globex"), samples.agent("globex")]
    acme_bot.ok("POST", "/v1/apply", json={"items": items})
    acme_bot.ok("POST", "/v1/ns/globex/agents/bot/sessions", 201, json={"id": "g1"})
    assert acme_bot.post(f"{BASE}/g1/message", json={"content": "hi"}).status_code == 404
    tables = ["messages", "turns", "outbox", "session_events"]
    assert row_counts(db, tables) == dict.fromkeys(tables, 0)
    assert acme_bot.ok("GET", f"{BASE}/s1")["messageCount"] == 0


def test_a_retry_whose_session_is_deleted_before_its_turn_is_read_finds_no_session(
    acme_bot: Api, db: Database, monkeypatch: Any
) -> None:
    """A retried Idempotency-Key is refused by the statement that locks the session, which
    commits; the earlier turn is read in a transaction of its own, by the session it locked.
    A session deleted in between (found by a review: a 500) answers 404, as a moment later."""
    from talon.sessions import posting

    acme_bot.ok("POST", BASE, 201, json={"id": "s1"})
    headers = {"Idempotency-Key": "k-1"}
    acme_bot.ok("POST", f"{BASE}/s1/message", 202, json={"content": "hi"}, headers=headers)
    queue_posted = posting.queue_posted

    def then_deleted(tx: Any, turn: Any, **options: Any) -> Any:
        posted = queue_posted(tx, turn, **options)
        with db.transaction() as other:
            other.execute("DELETE FROM sessions WHERE namespace = %s AND id = 's1'", (NS,))
        return posted

    monkeypatch.setattr(posting, "queue_posted", then_deleted)
    retry = acme_bot.post(f"{BASE}/s1/message", json={"content": "hi"}, headers=headers)
    monkeypatch.undo()
    assert retry.status_code == 404, retry.text
    assert retry.json()["error"]["code"] == "not_found"


def test_a_session_view_is_read_in_one_snapshot(acme_bot: Api, monkeypatch: Any) -> None:
    """GET session (and a list of sessions) reads its parts in one snapshot. A message
    committed while the view was being read used to be in its message list but not in its
    count (and a turn completing then showed the session idle with its answer uncounted)."""
    from talon.sessions import views

    acme_bot.ok("POST", BASE, 201, json={"id": "s1"})
    post(acme_bot, "s1", "one")
    recent = views.messages.recent

    def with_a_concurrent_post(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(views.messages, "recent", recent)
        post(acme_bot, "s1", "two")  # another request: committed before the list is read
        return recent(*args, **kwargs)

    monkeypatch.setattr(views.messages, "recent", with_a_concurrent_post)
    view = acme_bot.ok("GET", f"{BASE}/s1")
    assert view["messageCount"] == len(view["messages"]) == 1
    assert acme_bot.ok("GET", f"{BASE}/s1")["messageCount"] == 2
    # The same in a list: its sessions' rows first, then each one's turns.
    from talon.sessions import service

    summary = service.summary

    def summary_after_a_post(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(service, "summary", summary)
        post(acme_bot, "s1", "three")
        return summary(*args, **kwargs)

    monkeypatch.setattr(service, "summary", summary_after_a_post)
    [listed] = acme_bot.ok("GET", BASE)["items"]
    assert listed["messageCount"] == listed["queuedTurns"] == 2  # no worker: all queued


def test_a_posted_message_costs_one_round_trip(acme_bot: Api, monkeypatch: Any) -> None:
    """The session's lock and the queueing, the Idempotency-Key decided by its unique index,
    are one statement committed in one round trip when the message queues behind whatever
    is open (`enqueue`, the default); a retry reads its turn in a second; a strategy that
    looks at the open turns first takes more. A change here is a change in every message's
    latency and database cost, measured in Benchmarks."""
    from talon.store import statements

    acme_bot.ok("POST", BASE, 201, json={"id": "s1"})
    trips: list[tuple[int, bool]] = []  # per round trip: its statements, whether it commits
    run_batch = statements.run_batch

    def counting(connection: Any, work: Any, *, commit: bool = False) -> Any:
        trips.append((len(work), commit))
        return run_batch(connection, work, commit=commit)

    monkeypatch.setattr(statements, "run_batch", counting)
    for headers, body, replay in [
        ({}, {"content": "one"}, False),
        ({"Idempotency-Key": "k-1"}, {"content": "two"}, False),
        ({"Idempotency-Key": "k-1"}, {"content": "two"}, True),  # nothing written
    ]:
        trips.clear()
        response = acme_bot.post(f"{BASE}/s1/message", json=body, headers=headers)
        assert response.status_code == (200 if replay else 202), response.text
        # The lock and the queueing: one statement, committed with it; a retry's read.
        assert trips[0] == (1, True) and len(trips) == 1 + replay, (headers, trips)
    trips.clear()
    acme_bot.post(f"{BASE}/s1/message", json={"content": "x", "multitask_strategy": "interrupt"})
    assert len(trips) > 1
    monkeypatch.undo()
    assert acme_bot.ok("GET", f"{BASE}/s1")["messageCount"] == 3


def test_multitask_strategies(acme_bot: Api, start_worker) -> None:
    acme_bot.ok("POST", BASE, 201, json={"id": "s1"})
    first = post(acme_bot, "s1", "one")  # no worker yet: stays queued
    rejected = acme_bot.post(f"{BASE}/s1/message",
                             json={"content": "two", "multitask_strategy": "reject"})  # fmt: skip
    assert rejected.status_code == 409
    second = post(acme_bot, "s1", "three")  # enqueue (default)
    third = post(acme_bot, "s1", "four", multitask_strategy="interrupt")
    view = acme_bot.ok("GET", f"{BASE}/s1")
    assert view["activeTurn"]["id"] == third["turnId"] and view["queuedTurns"] == 1
    for cancelled in (first, second):
        turn = acme_bot.ok("GET", f"{BASE}/s1/turns/{cancelled['turnId']}")
        assert turn["state"] == "cancelled"
        assert turn["error"]["message"] == "interrupted by a newer message"
    start_worker()
    wait_idle(acme_bot, "s1")
    messages = acme_bot.ok("GET", f"{BASE}/s1/messages")["items"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "one"), ("user", "three"), ("user", "four"),
        ("assistant", "(demo model) Received: four"),
    ]  # fmt: skip


def test_cancel(acme_bot: Api) -> None:
    acme_bot.ok("POST", BASE, 201, json={"id": "s1"})
    turn = post(acme_bot, "s1", "one")
    cancelled = acme_bot.ok("POST", f"{BASE}/s1/cancel")
    assert cancelled == {"cancelled": [turn["turnId"]]}
    assert acme_bot.ok("POST", f"{BASE}/s1/cancel") == {"cancelled": []}
    events = read_stream(acme_bot, f"{BASE}/s1/stream", last_event_id=0,
                         params={"untilTurnEnd": "true"})  # fmt: skip
    assert [e["type"] for e in events] == ["message.created", "turn.queued", "turn.cancelled"]


def test_stream_resumes_with_nothing_lost_or_repeated(acme_bot: Api, start_worker) -> None:
    acme_bot.ok("POST", BASE, 201, json={"id": "s1"})
    start_worker()
    for i in range(3):
        post(acme_bot, "s1", f"m{i}")
    wait_idle(acme_bot, "s1")
    everything = read_stream(acme_bot, f"{BASE}/s1/stream", params={"lastEventId": 0,
                             "untilTurnEnd": "true"})  # fmt: skip
    assert [e["id"] for e in everything] == list(range(1, len(everything) + 1))
    # Drop the connection every 4 events and reconnect with Last-Event-ID.
    collected: list[dict[str, Any]] = []
    last = 0
    while True:
        chunk = read_stream(acme_bot, f"{BASE}/s1/stream", last_event_id=last,
                            params={"untilTurnEnd": "true"}, max_events=4)  # fmt: skip
        if not chunk:
            break
        collected += chunk
        last = chunk[-1]["id"]
    assert collected == everything


def test_browser_reconnect_resumes_from_the_header_not_the_query(
    acme_bot: Api, start_worker
) -> None:
    """A browser's EventSource opens the URL its page gave it (`?lastEventId=0`: replay all)
    and, after a drop, reconnects to that same URL adding `Last-Event-ID: <last id seen>`.
    The header must win, or every reconnect replays the whole session."""
    acme_bot.ok("POST", BASE, 201, json={"id": "s1"})
    start_worker()
    post(acme_bot, "s1", "before the page opened")
    wait_idle(acme_bot, "s1")
    url = f"{BASE}/s1/stream?lastEventId=0&untilTurnEnd=true"
    delivered: list[dict[str, Any]] = read_stream(acme_bot, url, max_events=3)  # then a drop
    post(acme_bot, "s1", "while disconnected")
    wait_idle(acme_bot, "s1")
    everything = read_stream(acme_bot, url)
    for _ in range(len(everything)):  # reconnect, read a few, drop, again: a flaky network
        chunk = read_stream(acme_bot, url, last_event_id=delivered[-1]["id"], max_events=3)
        if not chunk:
            break
        delivered += chunk
    assert [e["id"] for e in everything] == list(range(1, len(everything) + 1))
    assert [e["type"] for e in everything].count("turn.completed") == 2
    assert delivered == everything  # none twice, none missed, in order


def test_live_stream_sees_a_turn_posted_after_connecting(acme_bot: Api, start_worker) -> None:
    import threading

    acme_bot.ok("POST", BASE, 201, json={"id": "s1"})
    start_worker()
    seen: list[dict[str, Any]] = []
    reader = threading.Thread(
        target=lambda: seen.extend(
            read_stream(acme_bot, f"{BASE}/s1/stream", max_events=11, timeout=30)
        )
    )
    reader.start()
    time.sleep(0.5)  # the reader is connected and waiting (no Last-Event-ID: new events only)
    post(acme_bot, "s1", "hello")
    reader.join(timeout=30)
    assert [e["type"] for e in seen][-1] == "turn.completed"
    assert seen[0]["type"] == "message.created"


def test_stream_keep_alive_and_bad_last_event_id(acme_bot: Api) -> None:
    acme_bot.ok("POST", BASE, 201, json={"id": "s1"})
    bad = acme_bot.get(f"{BASE}/s1/stream", headers={"Last-Event-ID": "abc"})
    assert bad.status_code == 400
    with acme_bot.http.stream("GET", f"{BASE}/s1/stream", params={"heartbeat": 1},
                              timeout=10) as reply:  # fmt: skip
        lines = []
        for line in reply.iter_lines():
            lines.append(line)
            if line.startswith(": keep-alive"):
                break
    assert lines[0] == "retry: 2000"


def test_an_agent_with_sessions_cannot_be_deleted(acme_bot: Api) -> None:
    acme_bot.ok("POST", BASE, 201, json={"id": "keep-me"})
    refused = acme_bot.delete(f"/v1/ns/{NS}/agents/bot")
    assert refused.status_code == 409
    assert refused.json()["error"]["details"] == [
        {"path": "Session/keep-me", "message": "belongs to this Agent"}
    ]
    acme_bot.ok("DELETE", f"{BASE}/keep-me")
    acme_bot.ok("DELETE", f"/v1/ns/{NS}/agents/bot")


def test_stream_ends_after_max_seconds(acme_bot: Api) -> None:
    acme_bot.ok("POST", BASE, 201, json={"id": "s1"})
    started = time.monotonic()
    events = read_stream(acme_bot, f"{BASE}/s1/stream", params={"maxSeconds": 1, "heartbeat": 1})
    assert events == []
    assert 0.9 <= time.monotonic() - started < 5


def test_a_turn_for_an_agent_that_does_not_resolve_fails_cleanly(
    acme_bot: Api, start_worker
) -> None:
    acme_bot.ok("POST", BASE, 201, json={"id": "s1"})
    definition = acme_bot.ok("GET", f"/v1/ns/{NS}/agent-templates/support")["definition"]
    definition["customSpec"]["features"].append({"name": "region", "required": True})
    acme_bot.ok("PATCH", f"/v1/ns/{NS}/agent-templates/support", json={"definition": definition})
    start_worker()
    post(acme_bot, "s1", "anyone there?")
    events = read_stream(acme_bot, f"{BASE}/s1/stream", last_event_id=0,
                         params={"untilTurnEnd": "true"})  # fmt: skip
    assert [e["type"] for e in events][-1] == "turn.failed"
    assert events[-1]["data"]["code"] == "agent_not_resolved"
    # Fixed, the next message is answered.
    acme_bot.ok("PATCH", f"/v1/ns/{NS}/agents/bot",
                json={"spec": {"features": {"customer_id": "c", "region": "eu"}}})  # fmt: skip
    post(acme_bot, "s1", "now?")
    view = wait_idle(acme_bot, "s1")
    assert view["messages"][-1] == {"role": "assistant", "content": "(demo model) Received: now?"}


def _live(api: Api, session: str, max_events: int, sink: list[dict[str, Any]]) -> Any:
    import threading

    reader = threading.Thread(target=lambda: sink.extend(
        read_stream(api, f"{BASE}/{session}/stream", max_events=max_events, timeout=30)
    ))  # fmt: skip
    reader.start()
    time.sleep(0.5)  # connected and waiting for new events
    return reader


def test_live_events_from_notifications_equal_the_stored_ones(acme_bot: Api, start_worker) -> None:
    """A live stream gets events carried by notifications (no table read per wake-up); they
    must be exactly what a replay from the table gives, big ones (too large to carry) too."""
    acme_bot.ok("POST", BASE, 201, json={"id": "s1"})
    start_worker()
    before = read_stream(acme_bot, f"{BASE}/s1/stream", last_event_id=0,
                         params={"untilTurnEnd": "true"})  # fmt: skip
    assert before == []
    live: list[dict[str, Any]] = []
    reader = _live(acme_bot, "s1", 22, live)
    post(acme_bot, "s1", "small é ✓")
    post(acme_bot, "s1", "x" * 9_000)  # its message.created does not fit in a notification
    reader.join(timeout=30)
    replay = read_stream(acme_bot, f"{BASE}/s1/stream", last_event_id=0,
                         params={"untilTurnEnd": "true"})  # fmt: skip
    assert len(live) == 22 and live == replay[:22]
    assert [e["id"] for e in live] == list(range(1, 23))
    assert any(e["data"].get("content") == "x" * 9_000 for e in live)


def test_deleting_a_session_ends_its_open_streams(acme_bot: Api) -> None:
    acme_bot.ok("POST", BASE, 201, json={"id": "s1"})
    live: list[dict[str, Any]] = []
    reader = _live(acme_bot, "s1", 100, live)
    started = time.monotonic()
    acme_bot.ok("DELETE", f"{BASE}/s1")
    reader.join(timeout=10)
    assert not reader.is_alive() and time.monotonic() - started < 5
    assert live == []


def test_notified_events_are_taken_in_order_or_read_from_the_table() -> None:
    from talon.sessions.follow import _in_order

    def item(*ids: int, uid: str = "u") -> str:
        return uid + " " + json.dumps([{"id": n, "type": "t"} for n in ids])

    batch, read = _in_order([item(3, 4), item(5)], "u", 2)
    assert [e["id"] for e in batch] == [3, 4, 5] and not read
    batch, read = _in_order([item(2, 3)], "u", 2)  # already sent: skipped
    assert [e["id"] for e in batch] == [3] and not read
    batch, read = _in_order([item(3), item(5)], "u", 2)  # a gap
    assert [e["id"] for e in batch] == [3] and read
    assert _in_order([item(3, uid="other")], "u", 2) == ([], True)  # a recreated namesake
    assert _in_order(["u"], "u", 2) == ([], True)  # too big to carry
    assert _in_order([None], "u", 2) == ([], True)  # the listener reconnected


def test_until_turn_end_waits_for_every_queued_turn(acme_bot: Api, start_worker) -> None:
    """Terminal events say how many turns are still open, so a stream following queued turns
    ends after the last one (not the first), without asking the table."""
    acme_bot.ok("POST", BASE, 201, json={"id": "s1"})
    first = post(acme_bot, "s1", "one")
    second = post(acme_bot, "s1", "two")
    start_worker()
    events = read_stream(acme_bot, f"{BASE}/s1/stream", last_event_id=first["streamFrom"],
                         params={"untilTurnEnd": "true"})  # fmt: skip
    completed = [e for e in events if e["type"] == "turn.completed"]
    assert [e["turnId"] for e in completed] == [first["turnId"], second["turnId"]]
    assert [e["data"]["openTurns"] for e in completed] == [1, 0]
    assert events[-1] == completed[-1]


def test_open_turns_after_a_batch_come_from_its_last_terminal_event() -> None:
    from talon.sessions.follow import _open_after

    def event(kind: str, **data: Any) -> dict[str, Any]:
        return {"type": kind, "data": data}

    assert _open_after([event("turn.completed", openTurns=0)]) == 0
    assert _open_after([event("turn.completed", openTurns=0), event("turn.queued")]) == 1
    assert _open_after([event("turn.failed", openTurns=2), event("turn.cancelled",
                        openTurns=0)]) == 0  # fmt: skip
    assert _open_after([event("turn.completed")]) is None  # older events: read the table
    assert _open_after([event("step.started")]) is None


def test_a_terminal_event_read_from_the_table_ends_an_until_turn_end_stream() -> None:
    """The count taken when a stream opens can be older than the events read after it: the
    last terminal event's own openTurns decides (a turn that ended in between does not keep
    the stream open until the next heartbeat)."""
    from talon.sessions.follow import FollowOptions, follow
    from talon.sessions.service import StreamStart

    class Quiet:
        def get(self, timeout: float) -> list[str | None]:
            raise AssertionError("the stream should have ended without waiting")

    completed = Event(7, "turn.completed", "t", {"openTurns": 0}, datetime.now(UTC))
    start = StreamStart(uuid.uuid4(), 6, [completed], open_turns=1)
    sent = list(follow(None, Quiet(), start, FollowOptions(until_turn_end=True)))  # type: ignore[arg-type]
    assert [e["id"] for e in sent] == [7]


def _queued_as_written(db: Database, session_id: str) -> dict[str, Any]:
    """What queueing a session's turn wrote, without what differs by session or instant."""
    with db.transaction() as tx:
        session = tx.one("SELECT uid, last_message, last_turn, last_event_id FROM sessions "
                         "WHERE namespace = %s AND id = %s", (NS, session_id))  # fmt: skip
        assert session is not None
        uid = session.pop("uid")
        turns = tx.all(
            "SELECT id, seq, source, idempotency_key, input_seq, state, traceparent, "
            "stream_from, attempts, fencing_token, octet_length(request_hash) AS hash_bytes "
            "FROM turns WHERE session_uid = %s ORDER BY seq",
            (uid,),
        )
        turn_ids = {turn.pop("id"): f"turn-{turn['seq']}" for turn in turns}
        messages = tx.all("SELECT seq, role, content, turn_id FROM messages "
                          "WHERE session_uid = %s ORDER BY seq", (uid,))  # fmt: skip
        events = tx.all("SELECT id, type, data, turn_id FROM session_events "
                        "WHERE session_uid = %s ORDER BY id", (uid,))  # fmt: skip
        outbox = tx.all("SELECT topic, key, payload FROM outbox WHERE key = %s ORDER BY id",
                        (str(uid),))  # fmt: skip
    for row in [*messages, *events]:
        row["turn_id"] = turn_ids[row["turn_id"]]
    for row in outbox:
        row["key"] = "session"
        row["payload"] = {**row["payload"], "sessionUid": "session",
                          "turnId": turn_ids[uuid.UUID(row["payload"]["turnId"])]}  # fmt: skip
    return {"session": session, "turns": turns, "messages": messages, "events": events,
            "outbox": outbox}  # fmt: skip


def test_a_posted_turn_is_written_as_the_batch_statement_writes_one(
    acme_bot: Api, db: Database, database_url: str
) -> None:
    """A posted message's turn is queued by a statement for one turn (`turn_queue._POST_SQL`),
    every other strategy's and the scheduler's by one for any number (`_QUEUE_SQL`): the two
    must write the same rows and notifications for one turn."""
    listener = raw_connection(database_url)
    listener.autocommit = True
    for channel in ("talon_session_events", "talon_outbox"):
        listener.cursor().execute(f"LISTEN {channel}")
    heard: dict[str, list[tuple[str, Any]]] = {}
    # `interrupt` with no open turn to cancel: the batch statement, queueing as `enqueue` does.
    cases = [("one", "enqueue", "k-1"), ("two", "interrupt", "k-1"),
             ("three", "enqueue", None), ("four", "interrupt", None)]  # fmt: skip
    for session_id, strategy, key in cases:
        acme_bot.ok("POST", BASE, 201, json={"id": session_id})
        headers = {"Idempotency-Key": key} if key else {}
        post(acme_bot, session_id, "a message", multitask_strategy=strategy, headers=headers)
        listener.cursor().execute("SELECT 1")  # takes the notifications in
        heard[session_id] = []
        while listener.notifications:
            _, channel, payload = listener.notifications.popleft()
            head, _, rest = payload.partition(" ")
            if channel == "talon_outbox":  # "dispatch <row id> <payload>"
                sent = json.loads(rest.split(" ", 1)[1])
                heard[session_id].append((head, sorted(sent)))
            else:  # "<ns>/<id> <uid> <events>"
                events = json.loads(rest.split(" ", 1)[1])
                heard[session_id].append(
                    (channel, [(e["id"], e["type"], e["data"], sorted(e)) for e in events])
                )
    listener.close()
    for posted, batched in (("one", "two"), ("three", "four")):
        assert _queued_as_written(db, posted) == _queued_as_written(db, batched)
        assert heard[posted] == heard[batched] and len(heard[posted]) == 2


def test_a_turn_is_found_only_by_its_id_within_its_session(acme_bot: Api) -> None:
    for session_id in ("s1", "s2"):
        acme_bot.ok("POST", BASE, 201, json={"id": session_id})
    turn = post(acme_bot, "s1", "hello")["turnId"]
    assert acme_bot.ok("GET", f"{BASE}/s1/turns/{turn}")["id"] == turn
    for path in (f"s2/turns/{turn}", f"s1/turns/{uuid.uuid4()}"):
        response = acme_bot.get(f"{BASE}/{path}")
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"]["code"] == "not_found"
    for bad in ("not-a-turn-id", turn.upper()):
        response = acme_bot.get(f"{BASE}/s1/turns/{bad}")
        assert response.status_code == 400, response.text
        assert response.json()["error"]["details"][0]["path"] == "turn_id"
