"""The talon-ops MCP server (the `mcp` SDK, streamable HTTP, stateless, JSON responses) at
`/mcp/talon-ops`, behind bearer-token authentication. The tools are thin: each hands its
arguments and the caller's principal to `OpsTools`, which does the checking."""

from __future__ import annotations

import asyncio
import contextvars
import json
from typing import Any

import anyio
from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

from talon.auth.principal import Principal
from talon.errors import TalonError
from talon.ops.catalog import DEFAULT_HISTORY, TOOLS
from talon.ops.tools import OpsTools
from talon.services import Services

OPS_PATH = "/mcp/talon-ops"
_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "talon_ops_principal", default=None
)
_READ = ToolAnnotations(readOnlyHint=True)
_WRITE = ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=True)
_DESCRIPTIONS = {t.name: t.description for t in TOOLS}


def build_server(ops: OpsTools) -> MCPServer:
    server = MCPServer(
        "talon-ops",
        instructions="Inspect Talon: namespaces, agents, sessions, turns and schedules. "
        "Every call sees only what the presented token may see.",
    )

    async def run(tool: str, **arguments: Any) -> dict[str, Any]:
        principal = _principal.get()
        if principal is None:  # the HTTP layer authenticates first; this is a backstop
            raise ToolError("not authenticated")
        try:
            # PostgreSQL work off the event loop; the principal travels with the context.
            return await anyio.to_thread.run_sync(lambda: ops.run(principal, tool, arguments))
        except TalonError as exc:
            raise ToolError(exc.message) from exc

    def tool(name: str, *, write: bool = False) -> Any:
        return server.tool(name=name, description=_DESCRIPTIONS[name],
                           annotations=_WRITE if write else _READ)  # fmt: skip

    @tool("list_namespaces")
    async def list_namespaces() -> dict[str, Any]:
        return await run("list_namespaces")

    @tool("list_agents")
    async def list_agents(namespace: str) -> dict[str, Any]:
        return await run("list_agents", namespace=namespace)

    @tool("list_sessions")
    async def list_sessions(namespace: str, agent: str) -> dict[str, Any]:
        return await run("list_sessions", namespace=namespace, agent=agent)

    @tool("list_schedules")
    async def list_schedules(namespace: str) -> dict[str, Any]:
        return await run("list_schedules", namespace=namespace)

    @tool("read_session")
    async def read_session(
        namespace: str, agent: str, session_id: str, limit: int = DEFAULT_HISTORY, after: int = 0
    ) -> dict[str, Any]:
        return await run("read_session", namespace=namespace, agent=agent,
                         session_id=session_id, limit=limit, after=after)  # fmt: skip

    @tool("inspect_turn")
    async def inspect_turn(
        namespace: str, agent: str, session_id: str, turn_id: str
    ) -> dict[str, Any]:
        return await run("inspect_turn", namespace=namespace, agent=agent,
                         session_id=session_id, turn_id=turn_id)  # fmt: skip

    @tool("trigger_schedule", write=True)
    async def trigger_schedule(namespace: str, name: str) -> dict[str, Any]:
        return await run("trigger_schedule", namespace=namespace, name=name)

    @tool("pause_schedule", write=True)
    async def pause_schedule(namespace: str, name: str, paused: bool = True) -> dict[str, Any]:
        return await run("pause_schedule", namespace=namespace, name=name, paused=paused)

    return server


class OpsApp:
    """The ASGI app: bearer auth, then the MCP server. The session manager (normally started
    by the app's lifespan, which functions-framework does not run) starts on first use."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.server = build_server(OpsTools(services))
        # Any Host header: the function sits behind Cloud Run's own front end.
        self.mcp = self.server.streamable_http_app(
            streamable_http_path=OPS_PATH, stateless_http=True, json_response=True,
            host="0.0.0.0",
        )  # fmt: skip
        self._started: asyncio.Event | None = None

    async def _ensure_started(self) -> None:
        if self._started is None:
            self._started = asyncio.Event()
            started = self._started

            async def keep_running() -> None:
                async with self.server.session_manager.run():
                    started.set()
                    await asyncio.Event().wait()

            self._runner = asyncio.get_running_loop().create_task(keep_running())
        await self._started.wait()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"].rstrip("/") != OPS_PATH:
            await _json(send, 404, "not_found", f"the talon-ops MCP endpoint is {OPS_PATH}")
            return
        if scope["method"] == "GET":
            # Stateless mode has no server-initiated stream; a GET would hang open.
            await _json(send, 405, "method_not_allowed", "POST MCP requests to this endpoint")
            return
        # Latin-1 (as Starlette decodes headers): any byte decodes, none is a 500.
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        scheme, _, secret = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secret:
            await _json(send, 401, "unauthenticated", "send Authorization: Bearer <token>")
            return
        try:
            principal = await anyio.to_thread.run_sync(self.services.tokens.authenticate, secret)
        except TalonError as exc:
            await _json(send, exc.status, exc.code, exc.message)
            return
        await self._ensure_started()
        token = _principal.set(principal)
        try:
            await self.mcp(scope, receive, send)
        finally:
            _principal.reset(token)


async def _json(send: Any, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message, "details": []}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})
