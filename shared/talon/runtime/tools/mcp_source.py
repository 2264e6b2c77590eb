"""MCP servers as a tool source: an agent sees the tools of each server its effective spec
references (`mcpServerRefs`) and a binding in its namespace grants, named
`<server>.<tool>` (e.g. `stripe-readonly.list_invoices`).

Tool lists are cached per server version (a changed or deleted server, or a lifecycle
event, drops the entry). Every call re-checks the bindings in PostgreSQL before it leaves
the worker: a denied or unknown tool is answered with an error result and never reaches
the server. Header values come from secret references at call time and are never stored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from talon.runtime.providers.base import ToolSpec
from talon.runtime.secrets import SecretMissing, resolve_secret
from talon.runtime.tools import mcp_client
from talon.runtime.tools.base import AgentContext, ToolResult, Toolset
from talon.runtime.tools.bindings import Grant, grants_for, permitted
from talon.runtime.tools.mcp_sessions import TurnSessions
from talon.store.database import Database
from talon.tenancy.egress import EgressDenied
from talon.tenancy.grants import SecretNotGranted
from talon.tenancy.tenant_policy import TenancyPolicy

log = logging.getLogger(__name__)
# Why a server cannot be used now; each becomes an error the turn goes on without.
_UNREACHABLE = (mcp_client.MCPUnavailable, SecretMissing, SecretNotGranted, EgressDenied)
# The sessions of the turn this thread runs, while `MCPToolSource.turn` holds them.
_TURN_SESSIONS: ContextVar[TurnSessions | None] = ContextVar("talon_mcp_turn", default=None)
LIST_TTL_SECONDS = 300.0  # a server's tools may change without its manifest changing
SEPARATOR = "."


@dataclass(frozen=True)
class OfferedTool:
    """A server tool the agent is offered, and the bindings that permit it."""

    name: str  # as the agent's model sees it: `<server>.<tool>`
    tool: mcp_client.RemoteTool
    allowed_by: tuple[str, ...]


@dataclass(frozen=True)
class ServerTools:
    """One server the agent's spec references, as the worker resolves it now."""

    server: str
    grants: tuple[Grant, ...]  # the bindings that cover the agent for this server
    offered: list[OfferedTool] = field(default_factory=list)
    withheld: list[str] = field(default_factory=list)  # listed but no binding permits them
    error: str | None = None  # the server could not list its tools now


class MCPToolSource:
    def __init__(
        self,
        db: Database,
        tenancy: TenancyPolicy,
        *,
        list_ttl: float = LIST_TTL_SECONDS,
        max_list_seconds: float | None = None,
    ) -> None:
        self.db = db
        self.tenancy = tenancy
        self.list_ttl = list_ttl
        # A cap on each server's own timeout when listing (the gateway's inspection route
        # answers a person waiting); None: the server's timeoutSeconds.
        self.max_list_seconds = max_list_seconds
        # (namespace, server, resource version) -> (tools, monotonic time listed)
        self._lists: dict[tuple[str, str, int], tuple[list[mcp_client.RemoteTool], float]] = {}
        self._lock = threading.Lock()

    # -- the ToolSource port ----------------------------------------------------------------

    def tools_for(self, context: AgentContext) -> Toolset:
        tools: list[ToolSpec] = []
        unavailable: list[dict[str, str]] = []
        for entry in self.inventory(context):
            if entry.error is not None:
                unavailable.append({"source": f"mcp:{entry.server}", "error": entry.error})
                continue
            tools += [
                ToolSpec(o.name, o.tool.description, o.tool.input_schema) for o in entry.offered
            ]
        return Toolset(tools, unavailable)

    def inventory(self, context: AgentContext) -> list[ServerTools]:
        """Each bound server the agent references, in `mcpServerRefs` order: the tools it
        offers the agent with the bindings that permit each, the ones no binding permits, or
        why it cannot be listed now. Servers are listed concurrently, each within its
        timeout, through the tenancy policy (egress, secret grants)."""
        servers, grants = self._policy(context)

        def one(name: str) -> ServerTools:
            bound = tuple(grants[name])
            try:
                remote = self._list(context.namespace, name, servers[name])
            except _UNREACHABLE as exc:
                log.warning("MCP server %s/%s unavailable: %s", context.namespace, name, exc)
                why = f"egress denied: {exc}" if isinstance(exc, EgressDenied) else str(exc)
                return ServerTools(name, bound, error=why)
            offered, withheld = [], []
            for tool in remote:
                allowing = tuple(
                    g.binding for g in grants[name] if g.permits(tool.name, tool.read_only_hint)
                )
                if allowing:
                    offered.append(OfferedTool(f"{name}{SEPARATOR}{tool.name}", tool, allowing))
                else:
                    withheld.append(tool.name)
            return ServerTools(name, bound, offered, withheld)

        if len(servers) <= 1:
            return [one(name) for name in servers]
        with ThreadPoolExecutor(min(len(servers), 8), thread_name_prefix="talon-mcp") as pool:
            return list(pool.map(one, servers))

    def call(self, context: AgentContext, name: str, arguments: dict[str, Any]) -> ToolResult:
        server_name, _, tool = name.partition(SEPARATOR)
        servers, grants = self._policy(context)
        server = servers.get(server_name)
        if server is None or not tool:
            return _refused(name, context, "no binding grants this agent that server")
        try:
            known = {t.name: t for t in self._list(context.namespace, server_name, server)}
            url, headers = self._connection(context.namespace, server["body"])
        except _UNREACHABLE as exc:
            return ToolResult(f"error: MCP server {server_name!r} is unavailable: {exc}", True)
        remote = known.get(tool)
        if remote is None:
            return _refused(name, context, f"server {server_name!r} has no such tool")
        if not permitted(grants[server_name], tool, remote.read_only_hint):
            return _refused(name, context, "denied by the agent's MCP bindings")
        timeout = float(server["body"].get("timeoutSeconds", 30.0))
        sessions = _TURN_SESSIONS.get()
        call = mcp_client.call_tool if sessions is None else sessions.call_tool
        try:
            return call(url, headers, tool, arguments, timeout, self.tenancy.egress)
        except mcp_client.MCPUnavailable as exc:
            return ToolResult(f"error: calling {name} failed: {exc}", is_error=True)

    @contextmanager
    def turn(self) -> Iterator[None]:
        """The turn's calls (on this thread) share a session per server, ended when the turn
        leaves this scope (`mcp_sessions`); calls outside a turn open their own."""
        sessions = TurnSessions()
        token = _TURN_SESSIONS.set(sessions)
        try:
            yield
        finally:
            _TURN_SESSIONS.reset(token)
            sessions.close()

    def invalidate(self, namespace: str, kind: str, name: str) -> None:
        if kind not in ("MCPServer", "MCPBinding"):
            return
        with self._lock:
            for key in [k for k in self._lists if k[0] == namespace and k[1] == name]:
                del self._lists[key]

    # -- internals ---------------------------------------------------------------------------

    def _policy(
        self, context: AgentContext
    ) -> tuple[dict[str, dict[str, Any]], dict[str, list[Grant]]]:
        """The servers this agent may use now (referenced and bound), with their grants."""
        refs = list(context.effective.get("mcpServerRefs") or [])
        if not refs:
            return {}, {}
        with self.db.transaction() as tx:
            rows = tx.all(
                "SELECT kind, name, resource_version, body FROM resources WHERE namespace = %s "
                "AND (kind = 'MCPBinding' OR (kind = 'MCPServer' AND name = ANY(%s)))",
                (context.namespace, refs),
            )
        bindings = [(r["name"], r["body"]) for r in rows if r["kind"] == "MCPBinding"]
        grants = grants_for(bindings, context.agent, context.labels)
        servers = {
            r["name"]: r
            for r in rows
            if r["kind"] == "MCPServer" and r["name"] in grants
        }  # fmt: skip
        ordered = {name: servers[name] for name in refs if name in servers}
        return ordered, grants

    def _list(
        self, namespace: str, name: str, server: dict[str, Any]
    ) -> list[mcp_client.RemoteTool]:
        key = (namespace, name, int(server["resource_version"]))
        with self._lock:
            cached = self._lists.get(key)
        if cached is not None and time.monotonic() - cached[1] < self.list_ttl:
            return cached[0]
        body = server["body"]
        url, headers = self._connection(namespace, body)
        timeout = float(body.get("timeoutSeconds", 30.0))
        if self.max_list_seconds is not None:
            timeout = min(timeout, self.max_list_seconds)
        tools = mcp_client.list_tools(url, headers, timeout, self.tenancy.egress)
        with self._lock:
            for stale in [k for k in self._lists if k[:2] == key[:2] and k != key]:
                del self._lists[stale]
            self._lists[key] = (tools, time.monotonic())
        return tools

    def _connection(self, namespace: str, spec: dict[str, Any]) -> tuple[str, dict[str, str]]:
        """The server's URL and headers, checked against the tenancy policy as it is now
        (it may have tightened since the manifest was applied): the URL before any secret is
        read, each header's secret against the namespace's grants."""
        self.tenancy.egress.check_url(spec["url"])
        headers = {}
        for header in spec.get("headers", []):
            self.tenancy.grants.check(namespace, header["valueFrom"])
            headers[header["name"]] = resolve_secret(header["valueFrom"])
        return spec["url"], headers


def _refused(name: str, context: AgentContext, why: str) -> ToolResult:
    log.info("refused tool call %s for %s/%s: %s", name, context.namespace, context.agent, why)
    return ToolResult(f"error: tool {name!r} is not available to this agent ({why})", True)
