"""`GET .../agents/{agent}/tools`: the tools a turn of the agent would be offered now, each
with where it comes from and which bindings permit it.

The worker's own tool sources answer (built-ins, skills, the MCP source's inventory, which
its `tools_for` is built on), so this is what the worker would resolve, not a second
reading of the rules. MCP servers are contacted through the tenancy policy like the worker
contacts them (egress checks on every connection, secret grants per header), each within a
capped timeout; a server that cannot be listed is reported with the reason, never a failure
of the request.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from talon.api.routing import Answer, Context, Route
from talon.errors import Conflict
from talon.resources.registry import BY_NAME
from talon.runtime.providers.base import ToolSpec
from talon.runtime.tools.base import AgentContext
from talon.runtime.tools.builtin import BuiltinTools
from talon.runtime.tools.skills import PREFIX as SKILL_PREFIX
from talon.runtime.tools.skills import SkillToolSource
from talon.services import Services

if TYPE_CHECKING:
    from talon.runtime.tools.mcp_source import MCPToolSource, ServerTools

NAMESPACE_PREFIXES = ("/v1/ns/<ns>", "/v1/namespaces/<ns>")
# A person waits for this answer: a slow server costs at most this (plus connecting).
MAX_LIST_SECONDS = 10.0
# Listing again within this is served from the source's cache (a server's version change
# drops it at once); short, since this route is where an operator checks a change.
LIST_TTL_SECONDS = 30.0


class AgentTools:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.builtins = BuiltinTools()
        self.skills = SkillToolSource(Path(services.settings.worker.skills_dir))
        self._mcp: MCPToolSource | None = None
        self._lock = threading.Lock()

    @property
    def mcp(self) -> MCPToolSource:
        """Built on first use: the gateway imports the mcp SDK only if this route is used."""
        with self._lock:
            if self._mcp is None:
                from talon.runtime.tools.mcp_source import MCPToolSource

                self._mcp = MCPToolSource(
                    self.services.db,
                    self.services.tenancy,
                    list_ttl=LIST_TTL_SECONDS,
                    max_list_seconds=MAX_LIST_SECONDS,
                )
            return self._mcp

    def routes(self) -> list[Route]:
        return [
            Route("GET", f"{prefix}/agents/<agent>/tools", self.list_tools,
                  "The agent's effective tools: built-ins, skills and each bound MCP server's "
                  "tools after the bindings' allow/deny and read-only rules, with the source "
                  "of each; servers that cannot be listed now are reported, not fatal.",
                  tags=("agents",), answers=(Answer(200, "AgentTools"),))
            for prefix in NAMESPACE_PREFIXES
        ]  # fmt: skip

    def list_tools(self, ctx: Context, ns: str, agent: str) -> dict[str, Any]:
        record = self.services.resources.get(BY_NAME["Agent"], ns, agent)  # 404 as elsewhere
        status = record.status or {}
        if status.get("phase") != "Resolved" or "effective" not in status:
            raise Conflict(
                f"agent {agent!r} does not resolve ({status.get('phase', 'Pending')}): "
                f"{status.get('message', '')}".rstrip(": ")
            )
        context = AgentContext(ns, agent, "", status["effective"], record.labels)
        tools: dict[str, dict[str, Any]] = {}  # by name, first source wins (as the registry)
        unavailable: list[dict[str, str]] = []

        def offer(spec: ToolSpec, source: dict[str, Any], **extra: Any) -> None:
            tools.setdefault(spec.name, {"name": spec.name, "description": spec.description,
                                         "inputSchema": spec.parameters, **extra,
                                         "source": source})  # fmt: skip

        for spec in self.builtins.tools_for(context).tools:
            offer(spec, {"type": "builtin"})
        skills = self.skills.tools_for(context)
        unavailable += skills.unavailable
        for spec in skills.tools:
            skill = spec.name.removeprefix(SKILL_PREFIX)
            offer(spec, {"type": "skill", "skill": skill})
        inventory = self.mcp.inventory(context)
        servers = {entry.server: _server(entry) for entry in inventory}
        for entry in inventory:
            if entry.error is not None:
                unavailable.append({"source": f"mcp:{entry.server}", "error": entry.error})
            for o in entry.offered:
                source = {"type": "mcp", "server": entry.server, "tool": o.tool.name,
                          "allowedBy": list(o.allowed_by)}  # fmt: skip
                spec = ToolSpec(o.name, o.tool.description, o.tool.input_schema)
                offer(spec, source, readOnlyHint=o.tool.read_only_hint)
        refs = status["effective"].get("mcpServerRefs") or []
        for name in refs:
            # Referenced, but no binding covers the agent: not contacted.
            servers.setdefault(name, {"server": name, "state": "unbound", "error": None,
                                      "bindings": [], "tools": [], "withheld": []})  # fmt: skip
        return {
            "agent": agent,
            "tools": list(tools.values()),
            "servers": [servers[name] for name in refs if name in servers],
            "unavailable": unavailable,
        }


def _server(entry: ServerTools) -> dict[str, Any]:
    bindings = [
        {
            "name": g.binding,
            "allow": list(g.allow) if g.allow is not None else None,
            "deny": list(g.deny),
            "readOnly": g.read_only,
        }
        for g in entry.grants
    ]
    return {
        "server": entry.server,
        "state": "unavailable" if entry.error is not None else "available",
        "error": entry.error,
        "bindings": bindings,
        "tools": [o.tool.name for o in entry.offered],
        "withheld": entry.withheld,
    }
