"""Handlers for sessions: create/list/get/delete, messages, cancel, turns, and the SSE stream."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import flask

from talon.actions.requests import validated
from talon.actions.streams import open_events, post_and_follow, reader_access
from talon.api.body import parse_body
from talon.api.params import (
    AFTER,
    HEARTBEAT,
    IDEMPOTENCY_KEY,
    LAST_EVENT_ID_HEADER,
    LAST_EVENT_ID_QUERY,
    LIMIT,
    MAX_SECONDS,
    PAGE_TOKEN,
    UNTIL_TURN_END,
)
from talon.api.routing import Answer, Context, Route
from talon.api.sse import EVENT_STREAM, LEASE_KEY, EventStream, asks_for_events
from talon.auth.access import bearer_secret
from talon.sessions.follow import Follower, FollowOptions, follow_steps
from talon.sessions.models import CreateSession, PostMessage
from talon.sessions.service import StreamStart
from talon.store.notify import Inbox

NAMESPACE_PREFIXES = ("/v1/ns/<ns>", "/v1/namespaces/<ns>")


def _model(ctx: Context, model: Any, *, allow_empty: bool = False) -> Any:
    body = parse_body(
        ctx.request, ctx.services.settings.gateway.max_body_bytes, optional=allow_empty
    )
    return validated(model, {} if body is None else body)


def create_session(ctx: Context, ns: str, agent: str) -> tuple[int, dict[str, Any]]:
    request = _model(ctx, CreateSession, allow_empty=True)
    created, view = ctx.services.sessions.create(ns, agent, request)
    return (201 if created else 200), view


def list_sessions(ctx: Context, ns: str, agent: str) -> dict[str, Any]:
    items, next_id = ctx.services.sessions.list(
        ns, agent, limit=ctx.param("limit"), after=ctx.param("pageToken") or None
    )
    return {"items": items, "nextPageToken": next_id}


def get_session(ctx: Context, ns: str, agent: str, session_id: str) -> dict[str, Any]:
    return ctx.services.sessions.get(ns, agent, session_id)


def delete_session(ctx: Context, ns: str, agent: str, session_id: str) -> dict[str, Any]:
    return ctx.services.sessions.delete(ns, agent, session_id)


def list_messages(ctx: Context, ns: str, agent: str, session_id: str) -> dict[str, Any]:
    items, next_after = ctx.services.sessions.messages(
        ns, agent, session_id, after=ctx.param("after"), limit=ctx.param("limit")
    )
    return {"items": items, "nextAfter": next_after}


def post_message(ctx: Context, ns: str, agent: str, session_id: str) -> Any:
    request = _model(ctx, PostMessage)
    key = ctx.param("Idempotency-Key")
    if asks_for_events(ctx.request.headers.get("Accept", "")):
        return _post_and_stream(ctx, ns, agent, session_id, request, key)
    with ctx.services.publishing_beside_open_streams():
        accepted = ctx.services.sessions.post_message(
            ns, agent, session_id, request, idempotency_key=key
        )
    return (200 if accepted.replayed else 202), accepted.to_dict()


def _post_and_stream(
    ctx: Context, ns: str, agent: str, session_id: str, request: PostMessage, key: str | None
) -> flask.Response:
    """The message's answer as its turn's event stream (asked for with `Accept:
    text/event-stream`): from the turn's first event to its end, in the request that queued
    it; what the JSON answer says is in the headers."""
    assert ctx.principal is not None
    inbox, accepted, start = post_and_follow(
        ctx.services, ctx.principal, ns, agent, session_id, request, key
    )
    options = FollowOptions(
        until_turn=accepted.turn_id,
        heartbeat=ctx.param("heartbeat"),
        max_seconds=ctx.param("maxSeconds"),
    )
    answer = accepted.to_dict()
    headers = {
        "Talon-Turn-Id": accepted.turn_id,
        "Talon-Message-Seq": str(answer["messageSeq"]),
        "Talon-Stream-From": str(answer["streamFrom"]),
    }
    status = 200 if accepted.replayed else 202
    return _event_stream(ctx, ns, inbox, start, options, status, headers)


def cancel(ctx: Context, ns: str, agent: str, session_id: str) -> dict[str, Any]:
    return {"cancelled": ctx.services.sessions.cancel(ns, agent, session_id)}


def get_turn(ctx: Context, ns: str, agent: str, session_id: str, turn_id: str) -> dict[str, Any]:
    return ctx.services.sessions.turn(ns, agent, session_id, turn_id)


def stream(ctx: Context, ns: str, agent: str, session_id: str) -> flask.Response:
    after = _stream_position(ctx)
    options = FollowOptions(
        until_turn_end=ctx.param("untilTurnEnd"),
        heartbeat=ctx.param("heartbeat"),
        # End a stream after a while (under a thread-per-request server each one holds a
        # thread); the client resumes with Last-Event-ID and misses nothing.
        max_seconds=ctx.param("maxSeconds"),
    )
    assert ctx.principal is not None
    inbox, start = open_events(ctx.services, ctx.principal, ns, agent, session_id, after)
    return _event_stream(ctx, ns, inbox, start, options, 200, {})


def _event_stream(
    ctx: Context, ns: str, inbox: Inbox, start: StreamStart, options: FollowOptions,
    status: int, headers: dict[str, str],
) -> flask.Response:  # fmt: skip
    """The response following `start` (the inbox already subscribed), the stream's slot
    taken from the front door, re-checking the reader's token while it is open."""
    assert ctx.principal is not None
    secret = bearer_secret(ctx.request.headers.get("Authorization", "")) or b""
    environ = ctx.request.environ
    try:
        access, access_until = reader_access(ctx.services.tokens, ctx.principal, secret)
        options = replace(options, access=access, access_until=access_until)
        follower = Follower(follow_steps(ctx.services.sessions, start, options), inbox)
    except BaseException:
        inbox.close()  # nothing holds it yet
        raise
    events = EventStream(follower, inbox, environ.pop(LEASE_KEY, None), ns)
    events.hand_over(environ)
    response = flask.Response(
        events.body(),
        status=status,
        mimetype=EVENT_STREAM,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
    )
    response.call_on_close(events.response_closed)
    return response


def _stream_position(ctx: Context) -> int | None:
    """Where to resume (None: only new events). The Last-Event-ID header wins over
    `?lastEventId=`: a browser's EventSource opens with the URL its page gave it, query and
    all, and reconnects to the same URL adding the header with the last id it received;
    preferring the query would replay everything on every reconnect."""
    header = ctx.param("Last-Event-ID")
    return header if header is not None else ctx.param("lastEventId")


# One SSE event as a client's parser sees it (OpenAPI 3.1 has `schema` of an event stream
# describe each event; 3.2 calls it itemSchema). Before the events comes a `retry:` hint,
# between them `: keep-alive` comments.
_SSE_EVENT = {
    "type": "object",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "The event's id."},
        "event": {"type": "string", "description": "The event's type."},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": "#/components/schemas/SessionEvent"},
        },
        "retry": {"type": "integer"},
    },
}


def session_routes() -> list[Route]:
    routes = []
    for prefix in NAMESPACE_PREFIXES:
        base = f"{prefix}/agents/<agent>/sessions"
        item = f"{base}/<session_id>"
        tags = ("sessions",)
        session = (Answer(200, "Session"),)
        routes += [
            Route("POST", base, create_session,
                  "Create a session (an existing id for the same agent is returned, 200).",
                  role="write", request_schema="CreateSession", tags=tags,
                  answers=(Answer(201, "Session", "application/json", "Created."),
                           Answer(200, "Session", "application/json", "It existed."))),
            Route("GET", base, list_sessions, "List the agent's sessions.", tags=tags,
                  query=(LIMIT, PAGE_TOKEN), answers=(Answer(200, "SessionList"),)),
            Route("GET", item, get_session,
                  "Get a session: status, recent messages, the latest turn's steps.", tags=tags,
                  answers=session),
            Route("DELETE", item, delete_session, "Delete a session and its history.",
                  role="write", tags=tags, answers=session),
            Route("GET", f"{item}/messages", list_messages, "Messages, oldest first.",
                  tags=tags, query=(AFTER, LIMIT), answers=(Answer(200, "MessageList"),)),
            Route("POST", f"{item}/message", post_message,
                  "Post a user message; a turn is queued (202). With `Accept: "
                  "text/event-stream`, the answer is the turn's events to its end.",
                  role="write",
                  request_schema="PostMessage", tags=tags, headers=(IDEMPOTENCY_KEY,),
                  query=(HEARTBEAT, MAX_SECONDS),
                  answers=(Answer(202, "Accepted", "application/json",
                                  "Queued: the turn (JSON), or its events (event stream)."),
                           Answer(202, _SSE_EVENT, EVENT_STREAM, "Queued: its events."),
                           Answer(200, "Accepted", "application/json",
                                  "A retry with the same Idempotency-Key and body: the turn "
                                  "the first request queued, or its events."),
                           Answer(200, _SSE_EVENT, EVENT_STREAM,
                                  "A retry with the same Idempotency-Key and body: the "
                                  "events of the turn the first request queued."))),
            Route("POST", f"{item}/cancel", cancel, "Cancel the session's open turns.",
                  role="write", tags=tags, answers=(Answer(200, "Cancelled"),)),
            Route("GET", f"{item}/turns/<turn_id>", get_turn, "A turn with its steps.",
                  tags=tags, answers=(Answer(200, "TurnView"),)),
            Route("GET", f"{item}/stream", stream,
                  "Server-Sent Events; resume with Last-Event-ID (0 replays everything).",
                  tags=tags, query=(LAST_EVENT_ID_QUERY, UNTIL_TURN_END, HEARTBEAT, MAX_SECONDS),
                  headers=(LAST_EVENT_ID_HEADER,),
                  answers=(Answer(200, _SSE_EVENT, "text/event-stream"),)),
        ]  # fmt: skip
    return routes
