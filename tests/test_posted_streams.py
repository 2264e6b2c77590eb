"""A message posted with `Accept: text/event-stream`: the answer is its turn's event stream,
from the turn's first event to its end, in the one request that queued it."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

import samples
from conftest import Api, read_stream, sse_events
from talon.api.sse import asks_for_events
from talon.sessions.events import from_json
from talon.sessions.models import PostMessage
from talon.sessions.service import SessionService
from talon.store.database import Database

NS = "acme"
BASE = f"/v1/ns/{NS}/agents/bot/sessions"
EVENTS = {"Accept": "text/event-stream"}


@pytest.fixture
def acme_bot(api: Api) -> Api:
    items = [samples.namespace(NS), samples.template(NS), samples.agent(NS)]
    api.ok("POST", "/v1/apply", json={"items": items})
    api.ok("POST", BASE, 201, json={"id": "s1"})
    return api


def post_for_events(
    api: Api, session: str, content: str, *, headers: dict[str, str] | None = None,
    params: dict[str, Any] | None = None, timeout: float = 30,
) -> tuple[int, dict[str, str], list[dict[str, Any]]]:  # fmt: skip
    """The status, headers and events of a message posted for its events, read to the end."""
    with api.http.stream(
        "POST", f"{BASE}/{session}/message", json={"content": content},
        headers={**EVENTS, **(headers or {})}, params=params, timeout=timeout,
    ) as reply:  # fmt: skip
        if not reply.headers["Content-Type"].startswith("text/event-stream"):
            return reply.status_code, dict(reply.headers), [json.loads(reply.read())]
        received = list(sse_events(reply.iter_lines()))
        return reply.status_code, dict(reply.headers), received


def test_the_answer_is_the_turn_from_its_first_event_to_its_end(
    acme_bot: Api, start_worker: Any
) -> None:
    start_worker()
    status, headers, events = post_for_events(acme_bot, "s1", "hello")
    assert status == 202
    turn, start = headers["talon-turn-id"], int(headers["talon-stream-from"])
    assert headers["talon-message-seq"] == "1"
    assert [e["id"] for e in events] == list(range(start + 1, start + 1 + len(events)))
    assert {e["turnId"] for e in events} == {turn}
    assert events[0]["type"] == "message.created" and events[0]["data"]["content"] == "hello"
    assert events[1]["type"] == "turn.queued"
    assert events[-1]["type"] == "turn.completed"
    # The first two came from the posting statement, the rest from notifications: the same
    # events as the table holds.
    stored = read_stream(acme_bot, f"{BASE}/s1/stream", last_event_id=start,
                         params={"untilTurnEnd": "true"})  # fmt: skip
    assert events == stored
    # Without the header (or with */*) the answer is the JSON one.
    reply = acme_bot.post(f"{BASE}/s1/message", json={"content": "again"},
                          headers={"Accept": "*/*"})  # fmt: skip
    assert reply.status_code == 202 and reply.json()["messageSeq"] == 3


def test_the_stream_ends_with_its_own_turn_not_the_next_one(
    acme_bot: Api, start_worker: Any
) -> None:
    """Queued behind an open turn and followed by another: the stream carries the session's
    events from its turn's first, the earlier turn's run included, and ends at its own
    turn's end (an `untilTurnEnd` stream would go on through the next)."""
    first = acme_bot.ok("POST", f"{BASE}/s1/message", 202, json={"content": "one"})
    result: list[Any] = []
    reader = threading.Thread(target=lambda: result.append(post_for_events(acme_bot, "s1", "two")))
    reader.start()
    deadline = time.monotonic() + 10
    while acme_bot.ok("GET", f"{BASE}/s1")["messageCount"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    third = acme_bot.ok("POST", f"{BASE}/s1/message", 202, json={"content": "three"})
    start_worker()
    reader.join(timeout=30)
    status, headers, events = result[0]
    turn = headers["talon-turn-id"]
    assert status == 202
    ended = [(e["turnId"], e["type"]) for e in events if e["type"] == "turn.completed"]
    assert ended == [(first["turnId"], "turn.completed"), (turn, "turn.completed")]
    assert events[-1]["turnId"] == turn
    # The third turn was queued meanwhile (its events are the session's), but never run.
    assert [e["type"] for e in events if e["turnId"] == third["turnId"]] == [
        "message.created",
        "turn.queued",
    ]


def test_a_new_turns_stream_reads_nothing_back(acme_bot: Api, monkeypatch: Any) -> None:
    """The stream of a newly queued turn starts from what the posting statement returned and
    the notifications after it: the POST's one round trip, and no read."""
    from talon.store import statements

    trips: list[tuple[int, bool]] = []
    run_batch = statements.run_batch

    def counting(connection: Any, work: Any, *, commit: bool = False) -> Any:
        trips.append((len(work), commit))
        return run_batch(connection, work, commit=commit)

    monkeypatch.setattr(statements, "run_batch", counting)
    # No worker: the stream ends after maxSeconds with the turn's first two events.
    status, _, events = post_for_events(acme_bot, "s1", "hello", params={"maxSeconds": 1})
    monkeypatch.undo()
    assert status == 202
    assert [e["type"] for e in events] == ["message.created", "turn.queued"]
    assert trips == [(1, True)]  # the lock and the queueing: one statement, with the COMMIT


def test_a_retry_with_its_idempotency_key_streams_the_same_turn(
    acme_bot: Api, start_worker: Any
) -> None:
    start_worker()
    key = {"Idempotency-Key": "k-1"}
    status, headers, events = post_for_events(acme_bot, "s1", "hello", headers=key)
    assert status == 202 and events[-1]["type"] == "turn.completed"
    again, again_headers, replayed = post_for_events(acme_bot, "s1", "hello", headers=key)
    assert again == 200
    assert again_headers["talon-turn-id"] == headers["talon-turn-id"]
    assert replayed == events  # read back from the table this time
    assert acme_bot.ok("GET", f"{BASE}/s1")["messageCount"] == 2  # the question and the answer


def test_refusals_are_json_and_queue_nothing(acme_bot: Api) -> None:
    status, _, body = post_for_events(acme_bot, "missing", "hello")
    assert status == 404 and body[0]["error"]["code"] == "not_found"
    reader = acme_bot.as_token(acme_bot.token("read", [NS]))
    status, _, body = post_for_events(reader, "s1", "hello")
    assert status == 403, body
    with acme_bot.http.stream("POST", f"{BASE}/s1/message", json={"content": 3},
                              headers=EVENTS) as reply:  # fmt: skip
        assert reply.status_code == 422
        assert reply.headers["Content-Type"].startswith("application/json")
        assert "content" in reply.read().decode()
    assert acme_bot.ok("GET", f"{BASE}/s1")["messageCount"] == 0


def test_only_a_stream_gets_the_turns_first_events_back(acme_bot: Api, db: Database) -> None:
    """They carry the message (up to 100,000 characters): a JSON answer or a scheduler's
    tick of a thousand turns has no use for them."""
    sessions = SessionService(db)
    plain = sessions.post_message(NS, "bot", "s1", PostMessage(content="plain"))
    assert plain.first_events_json is None and plain.session_uid is not None
    streamed = sessions.post_message(NS, "bot", "s1", PostMessage(content="streamed"),
                                     with_events=True)  # fmt: skip
    events = from_json(streamed.first_events_json)
    assert [(e.id, e.type) for e in events] == [
        (streamed.stream_from + 1, "message.created"),
        (streamed.stream_from + 2, "turn.queued"),
    ]
    assert events[0].data["content"] == "streamed"


@pytest.mark.parametrize(
    ("accept", "stream"),
    [
        ("text/event-stream", True),
        ("text/event-stream; charset=utf-8", True),
        ("Text/Event-Stream;q=0.9, application/json;q=0.5", True),
        ("application/json, text/event-stream", False),  # a tie: the JSON answer
        ("text/event-stream;q=0.5, application/json", False),
        ("text/event-stream;q=0", False),
        ("*/*", False),
        ("text/*", False),
        ("", False),
        ("text/event-stream;q=x", False),
    ],
)
def test_which_accept_headers_ask_for_the_stream(accept: str, stream: bool) -> None:
    assert asks_for_events(accept) is stream


def test_every_subscription_ends_with_its_answer(acme_bot: Api, start_worker: Any) -> None:
    """A posted stream's subscription (taken before its message commits) ends with the
    stream, and with every answer that is no stream: nothing accumulates per message."""
    from talon import entrypoints

    listener = entrypoints.services().listener()
    baseline = listener.subscribers()
    start_worker()
    assert post_for_events(acme_bot, "s1", "hello")[0] == 202  # to its turn's end
    assert post_for_events(acme_bot, "missing", "hello")[0] == 404
    key = {"Idempotency-Key": "k-1"}
    assert post_for_events(acme_bot, "s1", "keyed", headers=key)[0] == 202
    assert post_for_events(acme_bot, "s1", "other body", headers=key)[0] == 422
    with acme_bot.http.stream("POST", f"{BASE}/s1/message", json={"content": "dropped"},
                              headers=EVENTS) as reply:  # fmt: skip
        assert reply.status_code == 202  # and the client goes away at once
    deadline = time.monotonic() + 20  # the dropped one ends at its turn's end or keep-alive
    while listener.subscribers() != baseline:
        if time.monotonic() >= deadline:  # where the dropped one's turn is, to tell why
            active = acme_bot.ok("GET", f"{BASE}/s1").get("activeTurn")
            raise AssertionError((listener.subscribers(), baseline, active))
        time.sleep(0.1)
