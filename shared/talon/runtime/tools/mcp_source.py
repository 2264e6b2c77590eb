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
from typing import Any

from talon.runtime.providers.base import ToolSpec
from talon.runtime.secrets import SecretMissing, resolve_secret
from talon.runtime.tools import mcp_client
from talon.runtime.tools.base import AgentContext, ToolResult, Toolset
from talon.runtime.tools.policy import Grant, grants_for, permitted
from talon.store.database import Database

log = logging.getLogger(__name__)
LIST_TTL_SECONDS = 300.0  # a server's tools may change without its manifest changing
SEPARATOR = "."


class MCPToolSource:
    def __init__(self, db: Database, *, list_ttl: float = LIST_TTL_SECONDS) -> None:
        self.db = db
        self.list_ttl = list_ttl
        # (namespace, server, resource version) -> (tools, monotonic time listed)
        self._lists: dict[tuple[str, str, int], tuple[list[mcp_client.RemoteTool], float]] = {}
        self._lock = threading.Lock()

    # -- the ToolSource port ----------------------------------------------------------------

    def tools_for(self, context: AgentContext) -> Toolset:
        servers, grants = self._policy(context)
        tools: list[ToolSpec] = []
        unavailable: list[dict[str, str]] = []
        for name, server in servers.items():
            try:
                remote = self._list(context.namespace, name, server)
            except (mcp_client.MCPUnavailable, SecretMissing) as exc:
                log.warning("MCP server %s/%s unavailable: %s", context.namespace, name, exc)
                unavailable.append({"source": f"mcp:{name}", "error": str(exc)})
                continue
            tools += [
                ToolSpec(f"{name}{SEPARATOR}{t.name}", t.description, t.input_schema)
                for t in remote
                if permitted(grants[name], t.name, t.read_only_hint)
            ]
        return Toolset(tools, unavailable)

    def call(self, context: AgentContext, name: str, arguments: dict[str, Any]) -> ToolResult:
        server_name, _, tool = name.partition(SEPARATOR)
        servers, grants = self._policy(context)
        server = servers.get(server_name)
        if server is None or not tool:
            return _refused(name, context, "no binding grants this agent that server")
        try:
            known = {t.name: t for t in self._list(context.namespace, server_name, server)}
            headers = _headers(server["body"])
        except (mcp_client.MCPUnavailable, SecretMissing) as exc:
            return ToolResult(f"error: MCP server {server_name!r} is unavailable: {exc}", True)
        remote = known.get(tool)
        if remote is None:
            return _refused(name, context, f"server {server_name!r} has no such tool")
        if not permitted(grants[server_name], tool, remote.read_only_hint):
            return _refused(name, context, "denied by the agent's MCP bindings")
        timeout = float(server["body"].get("timeoutSeconds", 30.0))
        url = server["body"]["url"]
        try:
            return mcp_client.call_tool(url, headers, tool, arguments, timeout)
        except mcp_client.MCPUnavailable as exc:
            return ToolResult(f"error: calling {name} failed: {exc}", is_error=True)

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
        tools = mcp_client.list_tools(
            body["url"], _headers(body), float(body.get("timeoutSeconds", 30.0))
        )
        with self._lock:
            for stale in [k for k in self._lists if k[:2] == key[:2] and k != key]:
                del self._lists[stale]
            self._lists[key] = (tools, time.monotonic())
        return tools


def _headers(spec: dict[str, Any]) -> dict[str, str]:
    return {h["name"]: resolve_secret(h["valueFrom"]) for h in spec.get("headers", [])}


def _refused(name: str, context: AgentContext, why: str) -> ToolResult:
    log.info("refused tool call %s for %s/%s: %s", name, context.namespace, context.agent, why)
    return ToolResult(f"error: tool {name!r} is not available to this agent ({why})", True)
