"""The tool source port. MCP servers, skills and built-ins implement it (see issue 5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from talon.runtime.providers.base import ToolSpec


@dataclass(frozen=True)
class AgentContext:
    namespace: str
    agent: str
    session_id: str
    effective: dict[str, Any]  # the agent's resolved spec (status.effective)
    labels: dict[str, str]


@dataclass(frozen=True)
class ToolResult:
    content: str
    is_error: bool = False


class ToolSource(Protocol):
    """Sources that cache (tool lists, sessions) may also define
    `invalidate(namespace, kind, name)`; the worker calls it on lifecycle events."""

    def tools_for(self, context: AgentContext) -> list[ToolSpec]: ...

    def call(self, context: AgentContext, name: str, arguments: dict[str, Any]) -> ToolResult: ...


class NoTools:
    """A source with no tools: turns are plain conversations."""

    def tools_for(self, context: AgentContext) -> list[ToolSpec]:
        return []

    def call(self, context: AgentContext, name: str, arguments: dict[str, Any]) -> ToolResult:
        return ToolResult(f"unknown tool {name!r}", is_error=True)
