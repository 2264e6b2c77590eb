"""The API's operations as plain descriptions (method, path, query, body, how to read the
answer), shared by the synchronous and the asynchronous client so neither restates a route."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from talon.client.models import (
    Accepted,
    ApplyResult,
    CreatedToken,
    Identity,
    Message,
    Resource,
    Session,
    Token,
    Turn,
)
from talon.resources.registry import BY_NAME, kind_for_alias

PAGE_SIZE = 100


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    parse: Callable[[Any], Any] = lambda body: body


@dataclass(frozen=True)
class Page:
    """One page of a list: the items' field, how to read one, and how to ask for the next."""

    call: Call
    read: Callable[[Any], Any]
    cursor_param: str = "pageToken"
    cursor_field: str = "nextPageToken"


def _segment(value: str) -> str:
    return quote(value, safe="")


def plural(kind: str) -> tuple[str, bool]:
    """The URL plural of a kind given by name or alias (`Agent`, `agents`, `template`), and
    whether it lives in a namespace."""
    found = kind_for_alias(kind) or BY_NAME.get(kind)
    if found is None:
        raise ValueError(f"unknown kind {kind!r}")
    return found.plural, found.namespaced


def collection(kind: str, namespace: str | None) -> str:
    name, namespaced = plural(kind)
    if not namespaced:
        return f"/v1/{name}"
    if not namespace:
        raise ValueError(f"{kind} lives in a namespace: pass namespace=")
    return f"/v1/ns/{_segment(namespace)}/{name}"


def sessions_path(namespace: str, agent: str, session_id: str | None = None) -> str:
    base = f"/v1/ns/{_segment(namespace)}/agents/{_segment(agent)}/sessions"
    return base if session_id is None else f"{base}/{_segment(session_id)}"


def whoami() -> Call:
    return Call("GET", "/v1/whoami", parse=Identity.model_validate)


def get(kind: str, name: str, namespace: str | None) -> Call:
    return Call("GET", f"{collection(kind, namespace)}/{_segment(name)}",
                parse=Resource.model_validate)  # fmt: skip


def list_resources(
    kind: str, namespace: str | None, page_size: int = PAGE_SIZE, selector: str | None = None
) -> Page:
    params: dict[str, Any] = {"limit": page_size}
    if selector:
        params["labelSelector"] = selector
    return Page(Call("GET", collection(kind, namespace), params=params), Resource.model_validate)


def delete(kind: str, name: str, namespace: str | None) -> Call:
    return Call("DELETE", f"{collection(kind, namespace)}/{_segment(name)}",
                parse=Resource.model_validate)  # fmt: skip


def apply(manifests: list[dict[str, Any]], *, dry_run: bool) -> Call:
    params = {"dryRun": "true"} if dry_run else {}

    def parse(body: Any) -> list[ApplyResult]:
        return [ApplyResult.model_validate(item) for item in body["items"]]

    return Call("POST", "/v1/apply", params=params, json={"items": manifests}, parse=parse)


def create_session(
    namespace: str, agent: str, session_id: str, metadata: dict[str, Any] | None
) -> Call:
    body: dict[str, Any] = {"id": session_id}
    if metadata is not None:
        body["metadata"] = metadata
    return Call("POST", sessions_path(namespace, agent), json=body,
                parse=Session.model_validate)  # fmt: skip


def get_session(namespace: str, agent: str, session_id: str) -> Call:
    return Call("GET", sessions_path(namespace, agent, session_id), parse=Session.model_validate)


def list_sessions(namespace: str, agent: str, page_size: int = PAGE_SIZE) -> Page:
    call = Call("GET", sessions_path(namespace, agent), params={"limit": page_size})
    return Page(call, Session.model_validate)


def post_message(
    namespace: str,
    agent: str,
    session_id: str,
    content: str,
    *,
    strategy: str | None,
    idempotency_key: str | None,
) -> Call:
    body: dict[str, Any] = {"content": content}
    if strategy is not None:
        body["multitask_strategy"] = strategy
    # Always keyed: the client may send it again after a dropped connection and the gateway
    # answers with the same turn instead of queuing a second one.
    key = idempotency_key or f"sdk-{uuid.uuid4().hex}"
    return Call("POST", f"{sessions_path(namespace, agent, session_id)}/message", json=body,
                headers={"Idempotency-Key": key}, parse=Accepted.model_validate)  # fmt: skip


def delete_session(namespace: str, agent: str, session_id: str) -> Call:
    return Call("DELETE", sessions_path(namespace, agent, session_id),
                parse=Session.model_validate)  # fmt: skip


def get_turn(namespace: str, agent: str, session_id: str, turn_id: str) -> Call:
    path = f"{sessions_path(namespace, agent, session_id)}/turns/{_segment(turn_id)}"
    return Call("GET", path, parse=Turn.model_validate)


def agent_tools(namespace: str, agent: str) -> Call:
    return Call("GET", f"{collection('agents', namespace)}/{_segment(agent)}/tools")


def schedule_fires(namespace: str, name: str) -> Call:
    return Call("GET", f"{collection('schedules', namespace)}/{_segment(name)}/fires")


def run_schedule(namespace: str, name: str) -> Call:
    return Call("POST", f"{collection('schedules', namespace)}/{_segment(name)}/run")


def create_token(
    name: str, role: str, namespaces: list[str], *, ttl_seconds: int | None = None,
    tools: list[str] | None = None,
) -> Call:  # fmt: skip
    body: dict[str, Any] = {"name": name, "role": role, "namespaces": namespaces}
    if ttl_seconds is not None:
        body["ttlSeconds"] = ttl_seconds
    if tools:
        body["tools"] = tools
    return Call("POST", "/v1/tokens", json=body, parse=CreatedToken.model_validate)


def list_tokens(page_size: int = PAGE_SIZE) -> Page:
    return Page(Call("GET", "/v1/tokens", params={"limit": page_size}), Token.model_validate)


def get_token(token_id: str) -> Call:
    return Call("GET", f"/v1/tokens/{_segment(token_id)}", parse=Token.model_validate)


def revoke_token(token_id: str) -> Call:
    return Call("DELETE", f"/v1/tokens/{_segment(token_id)}", parse=Token.model_validate)


def cancel(namespace: str, agent: str, session_id: str) -> Call:
    return Call("POST", f"{sessions_path(namespace, agent, session_id)}/cancel")


def list_messages(namespace: str, agent: str, session_id: str, page_size: int = 200) -> Page:
    call = Call("GET", f"{sessions_path(namespace, agent, session_id)}/messages",
                params={"limit": page_size})  # fmt: skip
    return Page(call, Message.model_validate, cursor_param="after", cursor_field="nextAfter")


def stream_path(namespace: str, agent: str, session_id: str) -> str:
    return f"{sessions_path(namespace, agent, session_id)}/stream"
