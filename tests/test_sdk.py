"""The Python SDK (`talon.client`) against the real gateway and a worker: typed answers,
paginated iterators, errors carrying code and field paths, Idempotency-Key handled, and a
stream that resumes across the gateway's `maxSeconds` ends and dropped connections; the
asynchronous client the same way; a dropped POST resent with the same key (MockTransport)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import samples
from conftest import ADMIN_TOKEN, Api
from talon import entrypoints
from talon.client import (
    AsyncClient,
    Client,
    Invalid,
    NotFound,
    StreamEnded,
    TalonConnectionError,
    Unauthenticated,
)
from talon.client.errors import APIError
from talon.client.following import MAX_FAILURES, Follower
from test_models import _agent_with_policy, policy

NS, AGENT, SESSION = "acme", "bot", "s1"


@pytest.fixture
def client(gateway_url: str) -> Any:
    with Client(gateway_url, ADMIN_TOKEN) as talon:
        yield talon


def test_typed_answers_and_paginated_lists(api: Api, client: Client) -> None:
    results = client.apply([samples.namespace(NS), *[samples.knowledge(NS, f"doc-{i}")
                                                     for i in range(5)]])  # fmt: skip
    assert [r.action for r in results] == ["created"] * 6
    assert client.whoami().role == "admin"
    names = [r.name for r in client.list("knowledge", namespace=NS, page_size=2)]
    assert names == [f"doc-{i}" for i in range(5)]  # three pages, followed as iterated
    doc = client.get("Knowledge", "doc-3", namespace=NS)
    assert doc.kind == "Knowledge" and doc.namespace == NS and doc.spec is not None
    dry = client.apply([samples.knowledge(NS, "doc-9")], dry_run=True)
    assert dry[0].action == "created"
    with pytest.raises(NotFound):
        client.get("knowledge", "doc-9", namespace=NS)


def test_errors_carry_their_code_and_field_paths(client: Client, gateway_url: str) -> None:
    client.apply([samples.namespace(NS), samples.template(NS), samples.agent(NS)])
    bad = samples.schedule(NS)
    bad["spec"]["cron"] = "0 0 30 2 *"  # never fires
    with pytest.raises(Invalid) as exc:
        client.apply([bad])
    assert exc.value.status == 422 and "items[0].spec.cron" in exc.value.fields
    with pytest.raises(NotFound) as missing:
        client.get_session(NS, AGENT, "nope")
    assert missing.value.code == "not_found"
    with Client(gateway_url, "tln_wrong") as stranger, pytest.raises(Unauthenticated):
        stranger.whoami()


def test_a_turn_followed_across_stream_ends_with_nothing_lost_or_repeated(
    api: Api, client: Client, model_server: Any, start_worker: Any
) -> None:
    _agent_with_policy(api, policy(model_server.url, "primary"))
    # An answer that takes ~3 s to stream: the gateway ends each connection after 1 s.
    model_server.add({"pieces": [f"piece {i} " for i in range(12)], "chunk_delay": 0.25})
    start_worker()
    session = client.create_session(NS, AGENT, "renewals", metadata={"owner": "sdk"})
    assert session.id == "renewals" and session.metadata == {"owner": "sdk"}
    assert client.create_session(NS, AGENT, "renewals").metadata == {"owner": "sdk"}
    accepted = client.send(NS, AGENT, SESSION, "Tell me slowly.", idempotency_key="k-1")
    again = client.send(NS, AGENT, SESSION, "Tell me slowly.", idempotency_key="k-1")
    assert again.turn_id == accepted.turn_id  # the same key: the same turn
    events = list(client.stream(NS, AGENT, SESSION, after=accepted.stream_from,
                                until_turn_end=True, max_seconds=1))  # fmt: skip
    ids = [e.id for e in events]
    assert ids == sorted(set(ids)) and ids == list(range(ids[0], ids[0] + len(ids)))
    assert events[-1].type == "turn.completed"
    text = "".join(e.data["text"] for e in events if e.type == "message.delta")
    assert text == "".join(f"piece {i} " for i in range(12))
    assert [m.role for m in client.messages(NS, AGENT, SESSION)] == ["user", "assistant"]
    assert client.get_session(NS, AGENT, SESSION).idle


def test_a_stream_ends_with_stream_ended_when_its_token_is_revoked(
    api: Api, gateway_url: str
) -> None:
    api.ok("POST", "/v1/apply", json={"items": [samples.namespace(NS), samples.template(NS),
                                                 samples.agent(NS)]})  # fmt: skip
    api.ok("POST", f"/v1/ns/{NS}/agents/{AGENT}/sessions", 201, json={"id": SESSION})
    reader = api.ok("POST", "/v1/tokens", 201, json={"name": "r", "role": "read",
                                                     "namespaces": [NS]})  # fmt: skip
    api.ok(
        "POST",
        f"/v1/ns/{NS}/agents/{AGENT}/sessions/{SESSION}/message",
        202,
        json={"content": "anyone?"},
    )  # no worker: the turn stays queued
    with Client(gateway_url, reader["token"]) as talon:
        stream = talon.stream(NS, AGENT, SESSION, after=0)
        assert next(stream).type == "message.created"  # the stream is open
        api.ok("DELETE", f"/v1/tokens/{reader['id']}")
        with pytest.raises(StreamEnded) as ended:
            list(stream)
    assert ended.value.reason == "token_revoked"


def test_a_stream_refused_for_its_token_s_share_is_retried_after_retry_after(
    api: Api, gateway_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TALON_GATEWAY_MAX_STREAMS_PER_TOKEN", "1")
    entrypoints.reset()  # the session's gateway, rebuilt with this limit
    api.ok("POST", "/v1/apply", json={"items": [samples.namespace(NS), samples.template(NS),
                                                 samples.agent(NS)]})  # fmt: skip
    api.ok("POST", f"/v1/ns/{NS}/agents/{AGENT}/sessions", 201, json={"id": SESSION})
    reader = api.ok("POST", "/v1/tokens", 201, json={"name": "r", "role": "read",
                                                     "namespaces": [NS]})  # fmt: skip
    api.ok("POST", f"/v1/ns/{NS}/agents/{AGENT}/sessions/{SESSION}/message", 202,
           json={"content": "anyone?"})  # fmt: skip
    with Client(gateway_url, reader["token"]) as talon:
        holder = talon.stream(NS, AGENT, SESSION, after=0, max_seconds=2)
        assert next(holder).type == "message.created"  # the token's one stream slot
        started = time.monotonic()
        follower = talon.stream(NS, AGENT, SESSION, after=0)
        # Refused (429, Retry-After: 5) while the holder is open; served once it ended.
        assert next(follower).type == "message.created"
        assert time.monotonic() - started >= 5
        follower.close()
        holder.close()


def test_a_follower_retries_only_what_the_gateway_asks_to_retry() -> None:
    follower = Follower(after=None, until_turn_end=False)
    busy = APIError(503, "busy", "full")
    assert follower.refused(APIError(404, "not_found", "no"), "5") is None
    assert follower.refused(busy, None) is None
    delay = follower.refused(APIError(429, "too_many_streams", "share"), "3")
    assert delay is not None and 3 <= delay <= 3.2
    huge = follower.refused(busy, "86400")
    assert huge is not None and 60 <= huge <= 61
    for _ in range(MAX_FAILURES - 2):
        assert follower.refused(busy, "1") is not None
    assert follower.refused(busy, "1") is None  # failing for too long: raised


def test_the_async_client_runs_a_turn(api: Api, gateway_url: str, start_worker: Any) -> None:
    api.ok("POST", "/v1/apply", json={"items": [samples.namespace(NS), samples.template(NS),
                                                 samples.agent(NS)]})  # fmt: skip
    start_worker()

    async def run() -> list[str]:
        async with AsyncClient(gateway_url, ADMIN_TOKEN) as talon:
            assert (await talon.whoami()).role == "admin"
            await talon.create_session(NS, AGENT, SESSION)
            accepted = await talon.send(NS, AGENT, SESSION, "hello")
            events = talon.stream(NS, AGENT, SESSION, after=accepted.stream_from,
                                  until_turn_end=True)  # fmt: skip
            types = [e.type async for e in events]
            names = [r.name async for r in talon.list("agents", namespace=NS)]
            assert names == [AGENT]
            return types

    types = asyncio.run(run())
    assert "turn.started" in types and types[-1] == "turn.completed"


def test_a_post_dropped_in_flight_is_resent_with_the_same_key() -> None:
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Idempotency-Key"])
        if len(keys) == 1:
            raise httpx.RemoteProtocolError("connection dropped", request=request)
        assert json.loads(request.content) == {"content": "hi"}
        return httpx.Response(202, json={"turnId": "t-1", "streamFrom": 7})

    with Client("http://talon.test", "tln_x", transport=httpx.MockTransport(handler)) as talon:
        accepted = talon.send(NS, AGENT, SESSION, "hi")
    assert accepted.turn_id == "t-1" and accepted.stream_from == 7
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0].startswith("sdk-")


def test_tokens_turns_schedules_selectors_and_session_delete(
    client: Client, gateway_url: str, start_worker: Any
) -> None:
    labelled = samples.knowledge(NS, "tagged")
    labelled["metadata"]["labels"] = {"tier": "gold"}
    client.apply([samples.namespace(NS), samples.template(NS), samples.agent(NS),
                  samples.schedule(NS), samples.knowledge(NS, "plain"), labelled])  # fmt: skip
    assert [k.name for k in client.list("knowledge", namespace=NS, selector="tier=gold")] == [
        "tagged"
    ]
    assert [k.name for k in client.list("knowledge", namespace=NS, selector="!tier")] == ["plain"]

    created = client.create_token("ci", role="write", namespaces=[NS], ttl_seconds=600)
    assert created.token.startswith("tln_") and created.expires_at is not None
    assert created.id in [t.id for t in client.tokens()]
    with Client(gateway_url, created.token) as ci:
        assert ci.whoami().namespaces == [NS]
    assert client.get_token(created.id).role == "write"
    assert client.revoke_token(created.id).revoked_at is not None
    with Client(gateway_url, created.token) as ci, pytest.raises(Unauthenticated):
        ci.whoami()

    start_worker()
    schedule = samples.schedule(NS)["metadata"]["name"]
    fired = client.run_schedule(NS, schedule)
    fires = client.schedule_fires(NS, schedule)
    assert fires["items"][0]["reason"] == "run" and "nextFireAt" in fires
    session_id = fired.get("sessionId") or samples.schedule(NS)["spec"]["target"]["sessionId"]
    events = client.stream(NS, AGENT, session_id, after=0, until_turn_end=True)
    turn_id = next(e.turn_id for e in events if e.type == "turn.queued")
    for _ in events:  # to the turn's end
        pass
    turn = client.turn(NS, AGENT, session_id, str(turn_id))
    assert turn.state == "completed" and turn.steps
    assert client.delete_session(NS, AGENT, session_id).id == session_id
    with pytest.raises(NotFound):
        client.turn(NS, AGENT, session_id, str(turn_id))


def test_the_async_client_has_the_same_calls(client: Client, gateway_url: str) -> None:
    client.apply([samples.namespace(NS), samples.template(NS), samples.agent(NS),
                  samples.schedule(NS)])  # fmt: skip
    schedule = samples.schedule(NS)["metadata"]["name"]

    async def run() -> None:
        async with AsyncClient(gateway_url, ADMIN_TOKEN) as talon:
            created = await talon.create_token("a", namespaces=[NS])
            assert created.id in [t.id async for t in talon.tokens()]
            assert (await talon.get_token(created.id)).name == "a"
            assert (await talon.revoke_token(created.id)).revoked_at is not None
            assert [a.name async for a in talon.list("agents", namespace=NS,
                                                     selector="app=nothing")] == []  # fmt: skip
            assert "items" in await talon.schedule_fires(NS, schedule)
            await talon.create_session(NS, AGENT, "gone")
            assert (await talon.delete_session(NS, AGENT, "gone")).id == "gone"
            with pytest.raises(NotFound):
                await talon.turn(NS, AGENT, "gone", "00000000-0000-0000-0000-000000000000")

    asyncio.run(run())


def test_cancel_messages_session_lists_and_deletes(client: Client) -> None:
    client.apply([samples.namespace(NS), samples.template(NS), samples.agent(NS),
                  samples.knowledge(NS, "old")])  # fmt: skip
    client.create_session(NS, AGENT, SESSION)
    accepted = client.send(NS, AGENT, SESSION, "queued, no worker")
    assert [s.id for s in client.sessions(NS, AGENT)] == [SESSION]
    assert not client.get_session(NS, AGENT, SESSION).idle
    assert client.cancel(NS, AGENT, SESSION) == {"cancelled": [accepted.turn_id]}
    assert client.turn(NS, AGENT, SESSION, accepted.turn_id).state == "cancelled"
    assert [(m.role, m.content) for m in client.messages(NS, AGENT, SESSION)] == [
        ("user", "queued, no worker")
    ]
    tools = client.agent_tools(NS, AGENT)
    assert {"name": "talon.current_time", "type": "builtin"} in [
        {"name": t["name"], "type": t["source"]["type"]} for t in tools["tools"]
    ]
    assert client.delete("knowledge", "old", namespace=NS).name == "old"
    with pytest.raises(NotFound):
        client.get("knowledge", "old", namespace=NS)


def test_send_and_stream_follows_its_turn_across_stream_ends(
    api: Api, client: Client, model_server: Any, start_worker: Any
) -> None:
    """One request posts and streams; the gateway ends it after 1 s, mid-answer, and the
    rest comes from `stream` resumed after the last event: nothing lost or repeated, and it
    ends at its own turn's end."""
    _agent_with_policy(api, policy(model_server.url, "primary"))
    model_server.add({"pieces": [f"piece {i} " for i in range(12)], "chunk_delay": 0.25})
    start_worker()
    client.create_session(NS, AGENT, SESSION)
    posted = client.send_and_stream(NS, AGENT, SESSION, "Tell me slowly.",
                                    idempotency_key="k-1", max_seconds=1)  # fmt: skip
    events = list(posted)
    assert posted.turn_id == events[0].turn_id  # from the answer's Talon-Turn-Id
    ids = [e.id for e in events]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert events[0].type == "message.created" and events[-1].type == "turn.completed"
    assert {e.turn_id for e in events} == {events[0].turn_id}
    text = "".join(e.data["text"] for e in events if e.type == "message.delta")
    assert text == "".join(f"piece {i} " for i in range(12))
    # The same key again: the same turn, its events replayed, nothing queued.
    again = list(client.send_and_stream(NS, AGENT, SESSION, "Tell me slowly.",
                                        idempotency_key="k-1"))  # fmt: skip
    assert [e.id for e in again] == ids
    assert [m.role for m in client.messages(NS, AGENT, SESSION)] == ["user", "assistant"]


def test_the_async_client_sends_and_streams(api: Api, gateway_url: str, start_worker: Any) -> None:
    api.ok("POST", "/v1/apply", json={"items": [samples.namespace(NS), samples.template(NS),
                                                 samples.agent(NS)]})  # fmt: skip
    start_worker()

    async def run() -> list[str]:
        async with AsyncClient(gateway_url, ADMIN_TOKEN) as talon:
            await talon.create_session(NS, AGENT, SESSION)
            posted = talon.send_and_stream(NS, AGENT, SESSION, "hello")
            events = [e async for e in posted]
            assert {e.turn_id for e in events} == {posted.turn_id}
            return [e.type for e in events]

    types = asyncio.run(run())
    assert types[:2] == ["message.created", "turn.queued"] and types[-1] == "turn.completed"


def test_send_and_stream_resends_a_post_dropped_before_any_event() -> None:
    keys: list[str] = []
    event = {"id": 8, "type": "message.created", "turnId": "t-1", "createdAt": "",
             "data": {"seq": 1, "role": "user", "content": "hi"}}  # fmt: skip
    end = {**event, "id": 9, "type": "turn.completed", "data": {"openTurns": 0}}
    body = "".join(f"id: {e['id']}\nevent: {e['type']}\ndata: {json.dumps(e)}\n\n"
                   for e in (event, end))  # fmt: skip

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "POST" and request.headers["Accept"] == "text/event-stream"
        keys.append(request.headers["Idempotency-Key"])
        if len(keys) == 1:
            raise httpx.RemoteProtocolError("connection dropped", request=request)
        if len(keys) == 2:  # refused for the token's share of streams: retried as asked
            return httpx.Response(
                429,
                headers={"Retry-After": "0"},
                json={"error": {"code": "too_many_streams", "message": "m"}},
            )
        headers = {"Content-Type": "text/event-stream", "Talon-Turn-Id": "t-1"}
        return httpx.Response(202, headers=headers, content=body.encode())

    with Client("http://talon.test", "tln_x", transport=httpx.MockTransport(handler)) as talon:
        events = list(talon.send_and_stream(NS, AGENT, SESSION, "hi"))
    assert [(e.id, e.type) for e in events] == [(8, "message.created"), (9, "turn.completed")]
    assert len(keys) == 3 and len(set(keys)) == 1 and keys[0].startswith("sdk-")


def test_send_and_stream_ends_with_its_turn_even_if_the_last_read_fails() -> None:
    """The connection drops while the SDK reads the stream's end after the turn's terminal
    event: the iteration is over all the same (resuming would follow the next turns)."""
    requests: list[str] = []
    events = [{"id": 8, "type": "message.created", "turnId": "t-1", "createdAt": "",
               "data": {"seq": 1, "role": "user", "content": "hi"}},
              {"id": 9, "type": "turn.completed", "turnId": "t-1", "createdAt": "",
               "data": {"openTurns": 1}}]  # fmt: skip

    def body() -> Iterator[bytes]:
        for e in events:
            yield f"id: {e['id']}\nevent: {e['type']}\ndata: {json.dumps(e)}\n\n".encode()
        raise httpx.ReadError("connection reset")

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request.method)
        return httpx.Response(202, headers={"Content-Type": "text/event-stream",
                                            "Talon-Turn-Id": "t-1"}, content=body())  # fmt: skip

    with Client("http://talon.test", "tln_x", transport=httpx.MockTransport(handler)) as talon:
        got = list(talon.send_and_stream(NS, AGENT, SESSION, "hi"))
    assert [e.id for e in got] == [8, 9] and requests == ["POST"]


def test_send_and_stream_gives_up_on_streams_that_never_carry_an_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each answer sends its head and `retry:` line, then drops: resent with the same key,
    and given up after MAX_FAILURES, not forever."""
    posts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posts.append(request.headers["Idempotency-Key"])
        return httpx.Response(202, headers={"Content-Type": "text/event-stream"},
                              content=b"retry: 2000\n\n")  # fmt: skip

    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    talon = Client("http://talon.test", "tln_x", transport=httpx.MockTransport(handler))
    with talon, pytest.raises(TalonConnectionError):
        list(talon.send_and_stream(NS, AGENT, SESSION, "hi"))
    assert len(posts) == MAX_FAILURES + 1 and len(set(posts)) == 1


def test_send_and_stream_follows_a_gateway_that_answers_json() -> None:
    """A gateway from before posted streams answers the message with its JSON 202: the turn
    is followed with `stream` from the answer's streamFrom, not posted again."""
    seen: list[tuple[str, str | None]] = []
    done = {"id": 8, "type": "turn.completed", "turnId": "t-1", "createdAt": "",
            "data": {"openTurns": 0}}  # fmt: skip

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.headers.get("Last-Event-ID")))
        if request.method == "POST":
            return httpx.Response(202, json={"turnId": "t-1", "streamFrom": 7})
        body = f"id: 8\nevent: turn.completed\ndata: {json.dumps(done)}\n\n".encode()
        return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, content=body)

    with Client("http://talon.test", "tln_x", transport=httpx.MockTransport(handler)) as talon:
        posted = talon.send_and_stream(NS, AGENT, SESSION, "hi")
        events = list(posted)
    assert [(e.id, e.type) for e in events] == [(8, "turn.completed")]
    assert posted.turn_id == "t-1" and seen == [("POST", None), ("GET", "7")]

    async def run() -> list[int]:
        transport = httpx.MockTransport(handler)
        async with AsyncClient("http://talon.test", "tln_x", transport=transport) as talon:
            return [e.id async for e in talon.send_and_stream(NS, AGENT, SESSION, "hi")]

    seen.clear()
    assert asyncio.run(run()) == [8] and seen == [("POST", None), ("GET", "7")]
