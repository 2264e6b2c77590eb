"""The asynchronous client: the same operations as `Client`, awaited."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx
from httpx_sse import SSEError, aconnect_sse

import talon.client.calls as calls
from talon.client.errors import TalonConnectionError, UnexpectedAnswer, error_from, parsed
from talon.client.following import Follower, TurnFollower, is_event_stream
from talon.client.models import (
    Accepted,
    ApplyResult,
    CreatedToken,
    Event,
    Identity,
    Message,
    Resource,
    Session,
    Token,
    Turn,
)
from talon.client.sync_client import RETRIES, _json
from talon.client.turn_events import AsyncTurnEvents
from talon.contexts import resolve


class AsyncClient:
    """A Talon gateway, for asyncio code: `AsyncClient(url, token)`, `AsyncClient.from_env()`."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"User-Agent": "talon-sdk"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers,
                                  timeout=timeout, transport=transport)  # fmt: skip

    @classmethod
    def from_env(cls, *, context: str | None = None, **options: Any) -> AsyncClient:
        """$TALON_URL and $TALON_TOKEN, else the current context of the CLI's contexts file
        (or the one named), as `talon` resolves them (talon/contexts.py); raises
        `talon.contexts.ContextError` for an unreadable file or an unknown context."""
        target = resolve(context=context)
        return cls(target.url, target.token, **options)

    @property
    def base_url(self) -> str:
        return str(self._http.base_url).rstrip("/")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the API ---------------------------------------------------------------------------

    async def whoami(self) -> Identity:
        return await self._send(calls.whoami())

    async def get(self, kind: str, name: str, *, namespace: str | None = None) -> Resource:
        return await self._send(calls.get(kind, name, namespace))

    def list(
        self, kind: str, *, namespace: str | None = None, selector: str | None = None,
        page_size: int = calls.PAGE_SIZE,
    ) -> AsyncIterator[Resource]:  # fmt: skip
        """Every object of a kind (with labels matching `selector`), page by page."""
        return self._pages(calls.list_resources(kind, namespace, page_size, selector))

    async def delete(self, kind: str, name: str, *, namespace: str | None = None) -> Resource:
        return await self._send(calls.delete(kind, name, namespace))

    async def apply(
        self, manifests: builtins.list[dict[str, Any]], *, dry_run: bool = False
    ) -> builtins.list[ApplyResult]:
        return await self._send(calls.apply(manifests, dry_run=dry_run))

    async def create_session(
        self, namespace: str, agent: str, session_id: str, *,
        metadata: dict[str, Any] | None = None,
    ) -> Session:  # fmt: skip
        """The named session (the existing one if it is already there)."""
        return await self._send(calls.create_session(namespace, agent, session_id, metadata))

    async def get_session(self, namespace: str, agent: str, session_id: str) -> Session:
        return await self._send(calls.get_session(namespace, agent, session_id))

    def sessions(self, namespace: str, agent: str) -> AsyncIterator[Session]:
        return self._pages(calls.list_sessions(namespace, agent))

    async def send(
        self, namespace: str, agent: str, session_id: str, content: str, *,
        strategy: str | None = None, idempotency_key: str | None = None,
    ) -> Accepted:  # fmt: skip
        """Post a message; queues a turn. Sent with an Idempotency-Key (yours or a fresh one),
        so the resend after a dropped connection yields the same turn, never a second."""
        call = calls.post_message(namespace, agent, session_id, content, strategy=strategy,
                                  idempotency_key=idempotency_key)  # fmt: skip
        return await self._send(call, retries=RETRIES)

    async def delete_session(self, namespace: str, agent: str, session_id: str) -> Session:
        return await self._send(calls.delete_session(namespace, agent, session_id))

    async def turn(self, namespace: str, agent: str, session_id: str, turn_id: str) -> Turn:
        return await self._send(calls.get_turn(namespace, agent, session_id, turn_id))

    async def agent_tools(self, namespace: str, agent: str) -> dict[str, Any]:
        return await self._send(calls.agent_tools(namespace, agent))

    async def schedule_fires(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._send(calls.schedule_fires(namespace, name))

    async def run_schedule(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._send(calls.run_schedule(namespace, name))

    async def create_token(
        self, name: str, *, role: str = "read", namespaces: builtins.list[str] | None = None,
        ttl_seconds: int | None = None, tools: builtins.list[str] | None = None,
    ) -> CreatedToken:  # fmt: skip
        call = calls.create_token(name, role, namespaces or ["*"], ttl_seconds=ttl_seconds,
                                  tools=tools)  # fmt: skip
        return await self._send(call)

    def tokens(self) -> AsyncIterator[Token]:
        return self._pages(calls.list_tokens())

    async def get_token(self, token_id: str) -> Token:
        return await self._send(calls.get_token(token_id))

    async def revoke_token(self, token_id: str) -> Token:
        return await self._send(calls.revoke_token(token_id))

    async def cancel(self, namespace: str, agent: str, session_id: str) -> Any:
        return await self._send(calls.cancel(namespace, agent, session_id))

    def messages(self, namespace: str, agent: str, session_id: str) -> AsyncIterator[Message]:
        return self._pages(calls.list_messages(namespace, agent, session_id))

    async def stream(
        self, namespace: str, agent: str, session_id: str, *,
        after: int | None = None, until_turn_end: bool = False, max_seconds: int = 600,
    ) -> AsyncGenerator[Event, None]:  # fmt: skip
        """The session's events after event `after` (None: only those that commit once the
        stream has connected, which it does when the first event is asked for: to follow a
        turn you post, pass the `stream_from` its `send` returned), across dropped
        connections and the gateway's `maxSeconds` ends, until the caller stops (or, with
        `until_turn_end`, no turn is open). Raises StreamEnded when the token's access ends."""
        follower = Follower(after, until_turn_end, max_seconds)
        path = calls.stream_path(namespace, agent, session_id)
        while True:
            headers, params = follower.request()
            received = 0
            refused: float | None = None
            try:
                async with aconnect_sse(self._http, "GET", path, headers=headers, params=params,
                                 timeout=httpx.Timeout(30.0, read=None)) as source:  # fmt: skip
                    if source.response.status_code != 200:
                        await source.response.aread()
                        error = error_from(source.response.status_code, _json(source.response))
                        retry_after = source.response.headers.get("Retry-After")
                        refused = follower.refused(error, retry_after)
                        if refused is None:
                            raise error
                    else:
                        async for sse in source.aiter_sse():
                            event = follower.event(sse.event, sse.data, sse.id)
                            if event is not None:
                                received += 1
                                yield event
            except (httpx.TransportError, SSEError) as exc:
                await asyncio.sleep(follower.failed(exc))
                continue
            if refused is not None:  # busy: as the gateway asked
                await asyncio.sleep(refused)
                continue
            done = follower.finished(received)
            if done is None:
                done = (await self.get_session(namespace, agent, session_id)).idle
            if done:
                return

    def send_and_stream(
        self, namespace: str, agent: str, session_id: str, content: str, *,
        strategy: str | None = None, idempotency_key: str | None = None,
        max_seconds: int = 600,
    ) -> AsyncTurnEvents:  # fmt: skip
        """Post a message and follow its turn in the same request (`Accept:
        text/event-stream`): the turn's events from its `message.created` to its end
        (`turn.completed`, `turn.failed` or `turn.cancelled`), the session's other events in
        between included (an earlier turn's run, a turn queued meanwhile). One request
        instead of `send` and `stream`'s two, and the first event sooner. Keyed like `send`:
        a connection dropped before the first event resends the message and gets the same
        turn; one dropped later resumes as `stream` does. A stream refused (429/503) is
        retried as the gateway asks; nothing was queued. Raises StreamEnded when the token's
        access ends. The result's `turn_id` is the turn's once the gateway has answered
        (None before the first event is asked for: nothing is sent until then). A gateway
        from before posted streams answers JSON: the turn is followed with `stream`."""
        call = calls.post_message(namespace, agent, session_id, content, strategy=strategy,
                                  idempotency_key=idempotency_key)  # fmt: skip
        follower = TurnFollower(None, until_turn_end=False, max_seconds=max_seconds)
        return AsyncTurnEvents(
            follower, self._turn_events(namespace, agent, session_id, call, follower)
        )

    async def _turn_events(
        self, namespace: str, agent: str, session_id: str, call: calls.Call,
        follower: TurnFollower,
    ) -> AsyncGenerator[Event, None]:  # fmt: skip
        while follower.after is None:
            refused: float | None = None
            try:
                async with aconnect_sse(
                    self._http, "POST", call.path, json=call.json, headers=call.headers,
                    params={"maxSeconds": follower.max_seconds},
                    timeout=httpx.Timeout(30.0, read=None),
                ) as source:  # fmt: skip
                    response = source.response
                    if response.status_code not in (200, 202):
                        await response.aread()
                        error = error_from(response.status_code, _json(response))
                        refused = follower.refused(error, response.headers.get("Retry-After"))
                        if refused is None:
                            raise error
                    elif not is_event_stream(response.headers.get("Content-Type", "")):
                        await response.aread()  # JSON: a gateway from before posted streams
                        follower.accepted(parsed(f"POST {call.path}", call.parse, _json(response)))
                    else:
                        follower.turn = response.headers.get("Talon-Turn-Id")
                        sses = source.aiter_sse()
                        async for sse in sses:
                            event = follower.event(sse.event, sse.data, sse.id)
                            if event is not None:
                                yield event
                                if follower.ends(event):
                                    # The gateway ends the stream here: read that, and the
                                    # connection goes back to the pool. The turn is over
                                    # whatever that read meets.
                                    with contextlib.suppress(httpx.TransportError, SSEError):
                                        async for _ in sses:
                                            pass
                                    return
            except (httpx.TransportError, SSEError) as exc:
                if follower.after is None:  # no event yet: the message again, same key
                    await asyncio.sleep(follower.failed(exc))
                continue
            if refused is not None:  # busy: as the gateway asked; nothing was queued
                await asyncio.sleep(refused)
            elif follower.after is None:
                await asyncio.sleep(
                    follower.failed(UnexpectedAnswer("the stream ended before its turn"))
                )
        resumed = self.stream(namespace, agent, session_id, after=follower.after,
                              until_turn_end=True, max_seconds=follower.max_seconds)  # fmt: skip
        async for event in resumed:
            yield event
            if follower.ends(event):
                return

    # -- plumbing --------------------------------------------------------------------------

    async def _send(self, call: calls.Call, *, retries: int = 0) -> Any:
        for attempt in range(retries + 1):
            try:
                response = await self._http.request(
                    call.method,
                    call.path,
                    params=call.params or None,
                    json=call.json,
                    headers=call.headers,
                )
                break
            except httpx.TransportError as exc:
                if attempt == retries:
                    raise TalonConnectionError(f"{call.method} {call.path}: {exc}") from exc
        if response.status_code >= 400:
            raise error_from(response.status_code, _json(response))
        return parsed(f"{call.method} {call.path}", call.parse, _json(response))

    async def _pages(self, page: calls.Page) -> AsyncIterator[Any]:
        params = dict(page.call.params)
        while True:
            body = await self._send(calls.Call(page.call.method, page.call.path, params=params))
            name = f"{page.call.method} {page.call.path}"
            if not isinstance(body, dict):
                raise UnexpectedAnswer(f"{name}: the answer is not a page of a list")
            for item in body.get("items") or []:
                yield parsed(name, page.read, item)
            cursor = body.get(page.cursor_field)
            if not cursor:
                return
            params[page.cursor_param] = cursor


__all__ = ["AsyncClient"]
