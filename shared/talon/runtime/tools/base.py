"""The tool source port: built-ins, skills and MCP servers implement it; the registry merges
them for an agent."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Toolset:
    tools: list[ToolSpec] = field(default_factory=list)
    # Sources that could not list their tools now ({"source": ..., "error": ...}); the turn
    # goes on without them and the stream says so.
    unavailable: list[dict[str, str]] = field(default_factory=list)


class ToolSource(Protocol):
    """Sources that cache (tool lists, sessions) may also define
    `invalidate(namespace, kind, name)`; the worker calls it on lifecycle events. Sources
    that hold connections for a turn may define `turn()`, a context manager the runner
    holds open around each turn's steps (see `turn_scope`)."""

    def tools_for(self, context: AgentContext) -> Toolset: ...

    def call(self, context: AgentContext, name: str, arguments: dict[str, Any]) -> ToolResult: ...


class NoTools:
    """A source with no tools: turns are plain conversations."""

    def tools_for(self, context: AgentContext) -> Toolset:
        return Toolset()

    def call(self, context: AgentContext, name: str, arguments: dict[str, Any]) -> ToolResult:
        return ToolResult(f"unknown tool {name!r}", is_error=True)


def turn_scope(source: ToolSource) -> AbstractContextManager[object]:
    """`source.turn()` when the source defines one, else a scope that does nothing."""
    turn = getattr(source, "turn", None)
    return turn() if turn is not None else nullcontext()
