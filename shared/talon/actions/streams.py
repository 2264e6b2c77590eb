"""Following a session's events for a caller, on any surface: where the stream starts and
how an open stream re-checks its reader."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from talon.auth.principal import Principal
from talon.auth.tokens import TOKENS_CHANNEL, TokenService
from talon.errors import TalonError
from talon.services import Services
from talon.sessions.events import EVENTS_CHANNEL, from_json, stream_key
from talon.sessions.follow import EXPIRED, StreamEnd
from talon.sessions.models import PostMessage
from talon.sessions.posting import Accepted
from talon.sessions.service import StreamStart
from talon.store.notify import Inbox

DEFAULT_MAX_SECONDS = 600
MAX_SECONDS = 3600


def open_events(
    services: Services, principal: Principal, namespace: str, agent: str, session_id: str,
    after: int | None,
) -> tuple[Inbox, StreamStart]:  # fmt: skip
    """Subscribe, then read where the stream starts: whatever commits after the read is
    notified; so is a revocation of the reader's token, which ends the stream. The caller
    closes the inbox."""
    inbox = _subscribe(services, principal, namespace, session_id)
    try:
        return inbox, services.sessions.open_stream(namespace, agent, session_id, after)
    except BaseException:
        inbox.close()
        raise


def post_and_follow(
    services: Services, principal: Principal, namespace: str, agent: str, session_id: str,
    request: PostMessage, idempotency_key: str | None,
) -> tuple[Inbox, Accepted, StreamStart]:  # fmt: skip
    """Post a message and start following its turn from its first event. Subscribed before
    the message commits, so everything after the turn's own first events is notified, and
    those the posting statement returned: a new turn's stream needs no read of its own. A
    replayed Idempotency-Key (and a strategy other than `enqueue`) reads where its turn's
    stream starts. The caller closes the inbox."""
    inbox = _subscribe(services, principal, namespace, session_id)
    try:
        # The answer streams on while the turn's dispatch message is published.
        with services.publishing_in_background():
            accepted = services.sessions.post_message(
                namespace, agent, session_id, request, idempotency_key=idempotency_key,
                with_events=True,
            )  # fmt: skip
        if accepted.session_uid is None or accepted.first_events_json is None:
            start = services.sessions.open_stream(
                namespace, agent, session_id, accepted.stream_from
            )
        else:
            # One open turn at least (this one): the stream goes on until it ends.
            events = from_json(accepted.first_events_json)
            start = StreamStart(accepted.session_uid, accepted.stream_from, events, 1)
        return inbox, accepted, start
    except BaseException:
        inbox.close()
        raise


def _subscribe(services: Services, principal: Principal, namespace: str, session_id: str) -> Inbox:
    return services.listener().subscribe(
        EVENTS_CHANNEL, stream_key(namespace, session_id), (TOKENS_CHANNEL, principal.token_id)
    )


def reader_access(
    tokens: TokenService, principal: Principal, secret: str | bytes
) -> tuple[Callable[[], StreamEnd | None], float | None]:
    """How an open stream re-checks its reader: the token it was opened with, authenticated
    again (a revocation empties the token cache first), and the token's expiry."""

    def access() -> StreamEnd | None:
        try:
            tokens.authenticate(secret)
        except TalonError:
            if principal.expires_at is not None and principal.expires_at <= datetime.now(UTC):
                return EXPIRED
            return StreamEnd("token_revoked", "the token this stream was opened with was revoked")
        return None

    if principal.expires_at is None:
        return access, None
    left = (principal.expires_at - datetime.now(UTC)).total_seconds()
    return access, time.monotonic() + max(0.0, left)
