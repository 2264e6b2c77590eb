"""The `mcp` SDK adapter: list and call a server's tools over streamable HTTP.

The SDK is asyncio-only and the worker runs turns on plain threads, so each operation here
runs in its own short event loop with its own connection and session: nothing shared
between threads, and a hung server costs one call its timeout, never the worker. A turn's
calls share sessions instead (`mcp_sessions.TurnSessions`), opened with `session`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx2
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import PaginatedRequestParams

from talon.runtime.tools.base import ToolResult
from talon.tenancy.egress import EgressDenied, EgressPolicy
from talon.tenancy.http_guard import guarded_async_client

T = TypeVar("T")
MAX_RESULT_CHARS = 32_000  # what a tool result may add to the model's context
_MAX_PAGES = 50


class MCPUnavailable(Exception):
    """The server could not be reached, or did not answer in time."""


@dataclass(frozen=True)
class RemoteTool:
    name: str
    description: str
    input_schema: dict[str, Any]
    read_only_hint: bool | None


def list_tools(
    url: str, headers: dict[str, str], timeout: float, egress: EgressPolicy
) -> list[RemoteTool]:
    async def run(session: ClientSession) -> list[RemoteTool]:
        tools: list[RemoteTool] = []
        cursor = None
        for _ in range(_MAX_PAGES):
            page = await session.list_tools(
                params=PaginatedRequestParams(cursor=cursor) if cursor else None
            )
            tools += [
                RemoteTool(
                    t.name,
                    t.description or "",
                    dict(t.input_schema or {"type": "object", "properties": {}}),
                    t.annotations.read_only_hint if t.annotations else None,
                )
                for t in page.tools
            ]
            cursor = page.next_cursor
            if not cursor:
                break
        return tools

    return _run(url, headers, timeout, egress, run)


def call_tool(
    url: str,
    headers: dict[str, str],
    name: str,
    arguments: dict[str, Any],
    timeout: float,
    egress: EgressPolicy,
) -> ToolResult:
    return _run(url, headers, timeout, egress, calling(name, arguments, timeout))


def calling(
    name: str, arguments: dict[str, Any], timeout: float
) -> Callable[[ClientSession], Awaitable[ToolResult]]:
    """The call of tool `name`, to run on a session."""

    async def run(session: ClientSession) -> ToolResult:
        result = await session.call_tool(name, arguments, read_timeout_seconds=timeout)
        return ToolResult(_text(result), is_error=bool(getattr(result, "is_error", False)))

    return run


@asynccontextmanager
async def session(
    url: str,
    headers: dict[str, str],
    timeout: float,
    egress: EgressPolicy,
    on_response: Callable[[httpx2.Response], Awaitable[None]] | None = None,
) -> AsyncIterator[ClientSession]:
    """An initialised session with the server, on a connection of its own; ended (and the
    connection closed) on exit. `on_response` sees every HTTP response."""
    hooks = {"response": [on_response]} if on_response is not None else {}
    async with (
        # Every connection, redirects included, checked against the egress policy.
        guarded_async_client(egress, headers=headers, timeout=timeout, event_hooks=hooks) as http,
        streamable_http_client(url, http_client=http) as streams,
        ClientSession(streams[0], streams[1]) as opened,
    ):
        await opened.initialize()
        yield opened


def unavailable(url: str, exc: BaseException, timeout: float) -> MCPUnavailable:
    """What a failed operation on the server at `url` is reported as."""
    if isinstance(exc, TimeoutError):
        return MCPUnavailable(f"no answer from {url} within {timeout:g} s")
    return MCPUnavailable(f"{url}: {_describe(exc, timeout)}")


def _run(
    url: str,
    headers: dict[str, str],
    timeout: float,
    egress: EgressPolicy,
    operation: Callable[[ClientSession], Awaitable[T]],
) -> T:
    async def connect_and_run() -> T:
        async with session(url, headers, timeout, egress) as opened:
            return await operation(opened)

    async def bounded() -> T:
        # The overall bound covers connecting and initialising, not just the call.
        return await asyncio.wait_for(connect_and_run(), timeout + 5)

    try:
        return asyncio.run(bounded())
    except Exception as exc:  # transport errors arrive wrapped in exception groups
        raise unavailable(url, exc, timeout) from exc


def _describe(exc: BaseException, timeout: float) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc) or type(exc).__name__
    if isinstance(exc, EgressDenied):
        return f"egress denied: {text}"
    if "timeout" in type(exc).__name__.lower() or "timed out" in text.lower():
        return f"timed out after {timeout:g} s ({text})"
    return text


def _text(result: Any) -> str:
    parts: list[str] = []
    for item in getattr(result, "content", None) or []:
        text = getattr(item, "text", None)
        parts.append(text if isinstance(text, str) else json.dumps(item.model_dump(mode="json")))
    if not parts and getattr(result, "structured_content", None) is not None:
        parts.append(json.dumps(result.structured_content))
    text = "\n".join(parts)
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + f"\n[truncated: {len(text)} characters in all]"
    return text
