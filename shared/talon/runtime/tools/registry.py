"""One tool registry per agent, merged from built-ins (`talon.*`), skills (`skill.*`) and
MCP servers (`<server>.*`). Names are stable and carry their source, so a call routes by
name alone, also when a resumed turn runs on another worker."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from talon.runtime.tools import builtin, skills
from talon.runtime.tools.base import AgentContext, ToolResult, Toolset, ToolSource, turn_scope
from talon.runtime.tools.builtin import BuiltinTools
from talon.runtime.tools.skills import SkillToolSource
from talon.store.database import Database
from talon.tenancy.tenant_policy import TenancyPolicy


class ToolRegistry:
    def __init__(self, builtins: ToolSource, skill_source: ToolSource, mcp: ToolSource) -> None:
        self.builtins = builtins
        self.skills = skill_source
        self.mcp = mcp

    def _source(self, name: str) -> ToolSource:
        if name.startswith(builtin.PREFIX):
            return self.builtins
        if name.startswith(skills.PREFIX):
            return self.skills
        return self.mcp

    def tools_for(self, context: AgentContext) -> Toolset:
        tools, unavailable, seen = [], [], set()
        for source in (self.builtins, self.skills, self.mcp):
            toolset = source.tools_for(context)
            unavailable += toolset.unavailable
            for tool in toolset.tools:
                if tool.name not in seen:  # prefixes keep sources apart; this is a backstop
                    seen.add(tool.name)
                    tools.append(tool)
        return Toolset(tools, unavailable)

    def call(self, context: AgentContext, name: str, arguments: dict[str, Any]) -> ToolResult:
        return self._source(name).call(context, name, arguments)

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Each source's turn scope (`base.turn_scope`), held for one turn."""
        with ExitStack() as scopes:
            for source in (self.builtins, self.skills, self.mcp):
                scopes.enter_context(turn_scope(source))
            yield

    def invalidate(self, namespace: str, kind: str, name: str) -> None:
        for source in (self.builtins, self.skills, self.mcp):
            invalidate = getattr(source, "invalidate", None)
            if invalidate is not None:
                invalidate(namespace, kind, name)


def default_tools(db: Database, skills_dir: Path, tenancy: TenancyPolicy) -> ToolRegistry:
    """Built-ins, the skills under `skills_dir` and the namespace's bound MCP servers."""
    from talon.runtime.tools.mcp_source import MCPToolSource  # the mcp SDK, when used

    return ToolRegistry(BuiltinTools(), SkillToolSource(skills_dir), MCPToolSource(db, tenancy))
