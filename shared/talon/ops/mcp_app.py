"""The talon-ops MCP server (the `mcp` SDK, streamable HTTP, stateless, JSON responses) at
`/mcp/talon-ops`. Bearer tokens are checked by the SDK's auth with Talon's verifier
(`ops/auth.py`); the tools are thin: each hands its arguments and the caller's principal to
`OpsTools`, which does the checking."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import anyio
from mcp.server import MCPServer
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import ToolAnnotations
from pydantic import AnyHttpUrl
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from talon.errors import TalonError
from talon.ops.auth import TalonTokenVerifier, current_principal
from talon.ops.catalog import DEFAULT_HISTORY, TOOLS
from talon.ops.tools import OpsTools
from talon.services import Services

log = logging.getLogger(__name__)
OPS_PATH = "/mcp/talon-ops"
_READ = ToolAnnotations(read_only_hint=True)
_WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True)
_DESCRIPTIONS = {t.name: t.description for t in TOOLS}


# The SDK's AuthSettings require an issuer. Talon's tokens come from the gateway's
# `/v1/tokens`, not an OAuth server, and with no `resource_server_url` the SDK publishes no
# discovery document naming it; a reserved name (RFC 2606) says it leads nowhere.
AUTH = AuthSettings(issuer_url=AnyHttpUrl("https://talon.invalid"), resource_server_url=None)


def transport_security(allowed_hosts: list[str]) -> TransportSecuritySettings:
    """The SDK's DNS-rebinding protection, on: a request whose Host is not listed is refused
    (421), and so is one whose Origin, when a browser sends one, is not one of those hosts."""
    origins = [f"{scheme}://{host}" for host in allowed_hosts for scheme in ("http", "https")]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=list(allowed_hosts),
        allowed_origins=origins,
    )


def build_server(ops: OpsTools, verifier: TalonTokenVerifier, auth: AuthSettings) -> MCPServer:
    server = MCPServer(
        "talon-ops",
        instructions="Inspect Talon: namespaces, agents, sessions, turns and schedules. "
        "Every call sees only what the presented token may see.",
        token_verifier=verifier,
        auth=auth,
    )

    async def run(tool: str, **arguments: Any) -> dict[str, Any]:
        principal = current_principal()
        if principal is None:  # the SDK's auth refuses the request first; this is a backstop
            raise ToolError("not authenticated")
        try:
            # PostgreSQL work off the event loop.
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

    @tool("get_usage")
    async def get_usage(
        namespace: str, agent: str | None = None, session_id: str | None = None,
        since: str | None = None, until: str | None = None, group_by: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        return await run("get_usage", namespace=namespace, agent=agent, session_id=session_id,
                         since=since, until=until, group_by=group_by)  # fmt: skip

    @tool("trigger_schedule", write=True)
    async def trigger_schedule(namespace: str, name: str) -> dict[str, Any]:
        return await run("trigger_schedule", namespace=namespace, name=name)

    @tool("pause_schedule", write=True)
    async def pause_schedule(namespace: str, name: str, paused: bool = True) -> dict[str, Any]:
        return await run("pause_schedule", namespace=namespace, name=name, paused=paused)

    return server


class OpsApp:
    """The ASGI app: the MCP server at OPS_PATH (the SDK authenticates), JSON errors around
    it. The session manager (normally started by the app's lifespan, which
    functions-framework does not run) starts on first use."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.server = build_server(
            OpsTools(services),
            TalonTokenVerifier(services.tokens),
            AUTH,
        )
        self.mcp = self.server.streamable_http_app(
            streamable_http_path=OPS_PATH, stateless_http=True, json_response=True,
            transport_security=transport_security(
                services.settings.gateway.ops_mcp_allowed_hosts
            ),
        )  # fmt: skip
        # An error the verifier raises (the database down) gets its own status, not a 500.
        self.mcp.add_exception_handler(Exception, _error_response)
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
        await self._ensure_started()
        try:
            await self.mcp(scope, receive, send)
        except TalonError as exc:
            # Answered already (_error_response); Starlette re-raises for the log, this is it.
            log.warning("talon-ops request failed: %s", exc.message)


async def _error_response(request: Request, exc: Exception) -> Response:
    if isinstance(exc, TalonError):
        return JSONResponse(exc.to_dict(), status_code=exc.status)
    return JSONResponse(
        {"error": {"code": "internal", "message": "internal error", "details": []}},
        status_code=500,
    )


async def _json(send: Any, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message, "details": []}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})
