"""The talon-ops tool names and what they need: shared by the tools, the MCP server and
token minting (a token may be limited to some of these)."""

from __future__ import annotations

from dataclasses import dataclass

MAX_HISTORY = 200  # messages one read_session call may return, whatever the caller asks
DEFAULT_HISTORY = 50


@dataclass(frozen=True)
class OpsTool:
    name: str
    description: str
    write: bool = False


TOOLS = (
    OpsTool("list_namespaces", "Namespaces this token may see."),
    OpsTool("list_agents", "Agents of a namespace, with their phase and template."),
    OpsTool("list_sessions", "Sessions of an agent, with status and message counts."),
    OpsTool("list_schedules", "Schedules of a namespace, with their next fire time."),
    OpsTool("read_session", f"A session's messages, oldest first (at most {MAX_HISTORY})."),
    OpsTool("inspect_turn", "A turn of a session: its state and journaled steps."),
    OpsTool(
        "get_usage",
        "Model tokens spent by a namespace, agent or session in a time range (RFC 3339 since/"
        "until, default the last 30 days), optionally grouped by agent, session, turn, "
        "profile, provider, model or day.",
    ),
    OpsTool("trigger_schedule", "Fire a schedule now (needs the write role).", write=True),
    OpsTool("pause_schedule", "Pause or resume a schedule (needs the write role).", write=True),
)
TOOL_NAMES = frozenset(t.name for t in TOOLS)
