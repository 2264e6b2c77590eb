"""talon.v1.Sessions: the session calls of the HTTP API over gRPC, through the same session
service, and StreamEvents (and PostMessageAndStream), which follow a session's events as the SSE
stream does."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from talon.actions.requests import validated
from talon.actions.stream_slots import StreamLease, StreamSlots
from talon.actions.streams import (
    DEFAULT_MAX_SECONDS,
    MAX_SECONDS,
    open_events,
    post_and_follow,
    reader_access,
)
from talon.auth.access import bearer_secret
from talon.errors import BadRequest, TalonError, Unauthenticated
from talon.grpc.calls import (
    Calls,
    check_request,
    guarded,
    metadata_value,
    page_size,
    required,
)
from talon.grpc.convert import from_struct, to_message
from talon.grpc.gen import sessions_pb2, sessions_pb2_grpc
from talon.sessions.follow import KEEP_ALIVE, FollowOptions, StreamEnd, follow
from talon.sessions.models import CreateSession, PostMessage
from talon.sessions.posting import IDEMPOTENCY_KEY_EXPECTS, IDEMPOTENCY_KEY_PATTERN
from talon.sessions.service import StreamStart
from talon.store.notify import Inbox

pb = sessions_pb2
_STRATEGIES = {
    pb.MULTITASK_STRATEGY_UNSPECIFIED: "enqueue",
    pb.ENQUEUE: "enqueue",
    pb.REJECT: "reject",
    pb.INTERRUPT: "interrupt",
}
# Between checks of the table and of the reader's token while a stream is quiet.
STREAM_HEARTBEAT_SECONDS = 5.0
CANCELLED = StreamEnd("cancelled", "the client cancelled the call")
# PostMessageAndStream's errors name the fields of its `message`.
_IN_MESSAGE = {
    name: f"message.{name}"
    for name in ("namespace", "agent", "session_id", "content", "multitask_strategy",
                 "idempotency_key")
} | {"Idempotency-Key": "message.idempotency_key"}  # fmt: skip
# The session service names the key as HTTP does (its header).
_KEY_FIELD = {"Idempotency-Key": "idempotency_key"}


def _session(view: dict[str, Any]) -> sessions_pb2.Session:
    view = dict(view)
    view["namespace"] = view.pop("ns")
    return to_message(view, pb.Session)


class SessionsServicer(sessions_pb2_grpc.SessionsServicer):
    def __init__(self, calls: Calls, streams: StreamSlots) -> None:
        self.calls = calls
        self.sessions = calls.services.sessions
        self.streams = streams

    def _where(self, request: Any) -> tuple[str, str]:
        return required(request.namespace, "namespace"), required(request.agent, "agent")

    @guarded
    def CreateSession(self, request: Any, context: grpc.ServicerContext) -> Any:
        ns, agent = self._where(request)

        def body(_: Any) -> Any:
            model = validated(CreateSession, {
                "id": request.session_id or None, "metadata": from_struct(request.metadata)
            })  # fmt: skip
            created, view = self.sessions.create(ns, agent, model)
            return pb.CreateSessionResponse(session=_session(view), created=created)

        return self.calls.run(context, "write", ns, body, rename={"id": "session_id"})

    @guarded
    def GetSession(self, request: Any, context: grpc.ServicerContext) -> Any:
        ns, agent = self._where(request)
        sid = required(request.session_id, "session_id")
        return self.calls.run(
            context, "read", ns, lambda _: _session(self.sessions.get(ns, agent, sid))
        )

    @guarded
    def ListSessions(self, request: Any, context: grpc.ServicerContext) -> Any:
        ns, agent = self._where(request)

        def body(_: Any) -> Any:
            items, next_id = self.sessions.list(
                ns, agent, limit=page_size(request.page_size), after=request.page_token or None
            )
            return pb.ListSessionsResponse(
                sessions=[_session(item) for item in items], next_page_token=next_id or ""
            )

        return self.calls.run(context, "read", ns, body)

    @guarded
    def DeleteSession(self, request: Any, context: grpc.ServicerContext) -> Any:
        ns, agent = self._where(request)
        sid = required(request.session_id, "session_id")
        return self.calls.run(
            context, "write", ns, lambda _: _session(self.sessions.delete(ns, agent, sid))
        )

    @guarded
    def PostMessage(self, request: Any, context: grpc.ServicerContext) -> Any:
        ns, agent = self._where(request)
        sid = required(request.session_id, "session_id")
        key = _idempotency_key(request)

        def body(_: Any) -> Any:
            model = _post_message(request)
            with self.calls.services.publishing_beside_open_streams():
                accepted = self.sessions.post_message(ns, agent, sid, model, idempotency_key=key)
            return pb.PostMessageResponse(
                turn_id=accepted.turn_id, message_seq=accepted.message_seq,
                state=accepted.state, stream_from=accepted.stream_from,
                replayed=accepted.replayed,
            )  # fmt: skip

        return self.calls.run(context, "write", ns, body, rename=_KEY_FIELD)

    @guarded
    def CancelTurns(self, request: Any, context: grpc.ServicerContext) -> Any:
        ns, agent = self._where(request)
        sid = required(request.session_id, "session_id")
        return self.calls.run(
            context, "write", ns,
            lambda _: pb.CancelTurnsResponse(cancelled=self.sessions.cancel(ns, agent, sid)),
        )  # fmt: skip

    @guarded
    def ListMessages(self, request: Any, context: grpc.ServicerContext) -> Any:
        ns, agent = self._where(request)
        sid = required(request.session_id, "session_id")
        after = _position(request.page_token, "page_token")

        def body(_: Any) -> Any:
            items, next_after = self.sessions.messages(
                ns, agent, sid, after=after, limit=page_size(request.page_size)
            )
            return pb.ListMessagesResponse(
                messages=[to_message(item, pb.Message) for item in items],
                next_page_token="" if next_after is None else str(next_after),
            )

        return self.calls.run(context, "read", ns, body)

    @guarded
    def GetTurn(self, request: Any, context: grpc.ServicerContext) -> Any:
        ns, agent = self._where(request)
        sid = required(request.session_id, "session_id")
        turn_id = required(request.turn_id, "turn_id")
        return self.calls.run(
            context, "read", ns,
            lambda _: to_message(self.sessions.turn(ns, agent, sid, turn_id), pb.Turn),
        )  # fmt: skip

    def StreamEvents(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            check_request(request)
            ns, agent = self._where(request)
            sid = required(request.session_id, "session_id")
            max_seconds = _max_seconds(request)
            after = request.after_event_id if request.HasField("after_event_id") else None
            if after is not None and after < 0:
                raise BadRequest("after_event_id must not be negative",
                                 [{"path": "after_event_id", "message": "negative"}])  # fmt: skip
        except TalonError as exc:
            Calls.abort(context, exc)
        yield from self._in_a_slot(
            context, lambda: self._follow(request, context, ns, agent, sid, after, max_seconds)
        )

    def _in_a_slot(
        self, context: grpc.ServicerContext, stream: Callable[[], Iterator[Any]]
    ) -> Iterator[Any]:
        """`stream()`'s messages, holding a stream slot taken before anything else is done
        for it (see stream_slots; a call without a token is refused by `stream()`)."""
        secret = bearer_secret(metadata_value(context, "authorization"))
        try:
            lease: StreamLease | None = None if secret is None else self.streams.take(secret)
        except TalonError as exc:
            Calls.abort(context, exc)
        try:
            yield from stream()
        finally:
            if lease is not None:
                lease.release()

    def _follow(
        self, request: Any, context: grpc.ServicerContext, ns: str, agent: str, sid: str,
        after: int | None, max_seconds: int,
    ) -> Iterator[Any]:  # fmt: skip
        def body(principal: Any) -> Iterator[Any]:
            access, access_until = self._access(context, principal)
            options = FollowOptions(
                until_turn_end=request.until_turn_end, heartbeat=STREAM_HEARTBEAT_SECONDS,
                max_seconds=max_seconds, access=access, access_until=access_until,
            )  # fmt: skip
            inbox, start = open_events(self.calls.services, principal, ns, agent, sid, after)
            yield from self._events(context, inbox, start, options)

        yield from self.calls.stream(context, "read", ns, body)

    def PostMessageAndStream(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        message = request.message
        try:
            check_request(request)
            max_seconds = _max_seconds(request)
        except TalonError as exc:
            Calls.abort(context, exc)
        try:
            ns, agent = self._where(message)
            sid = required(message.session_id, "session_id")
            key = _idempotency_key(message)
        except TalonError as exc:
            Calls.abort(context, exc, rename=_IN_MESSAGE)
        # The slot is taken before anything is queued.
        yield from self._in_a_slot(
            context,
            lambda: self._post_and_follow(context, message, ns, agent, sid, key, max_seconds),
        )

    def _post_and_follow(
        self, context: grpc.ServicerContext, message: Any, ns: str, agent: str, sid: str,
        key: str | None, max_seconds: int,
    ) -> Iterator[Any]:  # fmt: skip
        def body(principal: Any) -> Iterator[Any]:
            model = _post_message(message)
            access, access_until = self._access(context, principal)
            services = self.calls.services
            inbox, accepted, start = post_and_follow(
                services, principal, ns, agent, sid, model, key
            )
            try:  # raises once the client has cancelled
                context.send_initial_metadata((
                    ("talon-turn-id", accepted.turn_id),
                    ("talon-message-seq", str(accepted.message_seq)),
                    ("talon-stream-from", str(accepted.stream_from)),
                    ("talon-replayed", "true" if accepted.replayed else "false"),
                ))  # fmt: skip
            except BaseException:
                inbox.close()  # `_events` has not taken it yet
                raise
            options = FollowOptions(
                until_turn=accepted.turn_id, heartbeat=STREAM_HEARTBEAT_SECONDS,
                max_seconds=max_seconds, access=access, access_until=access_until,
            )  # fmt: skip
            yield from self._events(context, inbox, start, options)

        yield from self.calls.stream(context, "write", ns, body, rename=_IN_MESSAGE)

    def _access(
        self, context: grpc.ServicerContext, principal: Any
    ) -> tuple[Callable[[], StreamEnd | None], float | None]:
        """How an open stream re-checks its reader (its token, and whether the client is
        still there), and when the token expires."""
        secret = bearer_secret(metadata_value(context, "authorization")) or b""
        reader, access_until = reader_access(self.calls.services.tokens, principal, secret)

        def access() -> StreamEnd | None:
            return CANCELLED if not context.is_active() else reader()

        return access, access_until

    def _events(
        self, context: grpc.ServicerContext, inbox: Inbox, start: StreamStart,
        options: FollowOptions,
    ) -> Iterator[Any]:  # fmt: skip
        """The stream's events as messages, from `start` (the inbox subscribed, and closed
        here at the end)."""
        try:
            # A client that goes away wakes the stream, which then ends and frees its thread.
            if not context.add_callback(inbox.wake):
                return
            for event in follow(self.sessions, inbox, start, options):
                if event is KEEP_ALIVE:
                    continue
                if event is CANCELLED:
                    return
                if isinstance(event, StreamEnd):
                    raise Unauthenticated(
                        event.message, [{"path": "authorization", "message": event.reason}]
                    )
                yield to_message(event, pb.SessionEvent)
        finally:
            inbox.close()


def _idempotency_key(request: Any) -> str | None:
    key = request.idempotency_key or None
    if key is not None and not re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key):
        raise BadRequest(
            "idempotency_key is malformed",
            [{"path": "idempotency_key", "message": f"expected {IDEMPOTENCY_KEY_EXPECTS}"}],
        )
    return key


def _post_message(request: Any) -> PostMessage:
    return validated(PostMessage, {
        "content": request.content,
        "multitask_strategy": _STRATEGIES.get(request.multitask_strategy, "?"),
    })  # fmt: skip


def _max_seconds(request: Any) -> int:
    max_seconds = int(request.max_seconds or DEFAULT_MAX_SECONDS)
    if not 0 < max_seconds <= MAX_SECONDS:
        raise BadRequest(
            f"max_seconds must be between 1 and {MAX_SECONDS}",
            [{"path": "max_seconds", "message": f"expected 1 to {MAX_SECONDS}"}],
        )
    return max_seconds


def _position(token: str, field: str) -> int:
    if not token:
        return 0
    if not token.isdigit() or len(token) > 18:
        raise BadRequest(f"{field} is malformed", [{"path": field, "message": "not a page token"}])
    return int(token)
