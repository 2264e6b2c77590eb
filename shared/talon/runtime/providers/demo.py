"""The built-in `demo` provider: deterministic, offline, follows the tool-calling protocol.

It exists so `talon dev` runs end to end on a machine with no model credentials. It is used
only when a profile names it, or by `talon dev` when no credentials are configured.
"""

from __future__ import annotations

import json
import re
from typing import Any

from talon.runtime.providers.base import ModelRequest, ModelResponse, ToolCall, ToolSpec

_WORD = re.compile(r"[a-z0-9]+")
MAX_TOOLS_PER_TURN = 2  # e.g. a skill, then the tool its instructions point to


class DemoModel:
    def __init__(self, profile: str = "demo", model: str = "demo") -> None:
        self.label = f"{profile}/demo:{model}"

    def complete(self, request: ModelRequest) -> ModelResponse:
        messages = request.messages
        last = messages[-1] if messages else {"role": "user", "content": ""}
        if last.get("role") == "tool":
            # Results in hand (a skill's instructions, say) may point to one more tool.
            called = _tools_called_this_turn(messages)
            results = _tool_results_of_this_turn(messages)
            text = " ".join([_user_text(messages), *(r for _, r in results)])
            candidates = [t for t in request.tools if t.name not in called]
            tool = _best_tool(text, candidates, minimum=2)
            if tool is not None and len(called) < MAX_TOOLS_PER_TURN:
                return self._call(tool, messages)
            summary = "; ".join(f"{name}: {_clip(text, 160)}" for name, text in results)
            return ModelResponse(
                f"(demo model) Here is what the tools returned. {summary}", [], self.label
            )
        text = str(last.get("content") or "")
        tool = _best_tool(text, request.tools)
        if tool is not None:
            return self._call(tool, messages)
        return ModelResponse(f"(demo model) Received: {_clip(text, 400)}", [], self.label)

    def _call(self, tool: ToolSpec, messages: list[dict[str, Any]]) -> ModelResponse:
        arguments = _arguments(tool, messages)
        call = ToolCall(f"call_{len(messages)}_{tool.name}", tool.name, arguments)
        return ModelResponse("", [call], self.label)


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _best_tool(text: str, tools: list[ToolSpec], minimum: int = 1) -> ToolSpec | None:
    """The tool whose name shares the most words (4+ letters, at least `minimum`) with the
    text."""
    words = {w for w in _WORD.findall(text.lower()) if len(w) >= 4}
    words |= {w.rstrip("s") for w in words}
    best, score = None, minimum - 1
    for tool in tools:
        parts = {p for p in _WORD.findall(tool.name.lower()) if len(p) >= 4}
        parts |= {p.rstrip("s") for p in parts}
        overlap = len(words & parts)
        if overlap > score:
            best, score = tool, overlap
    return best


def _arguments(tool: ToolSpec, messages: list[dict[str, Any]]) -> str:
    """Required arguments: a string is taken from the conversation when it says
    `name: value` (the agent's features in the system prompt do), else a placeholder."""
    properties: dict[str, Any] = tool.parameters.get("properties", {})
    text = "\n".join(str(m.get("content") or "") for m in messages)
    values: dict[str, Any] = {}
    for name in tool.parameters.get("required", []):
        kind = properties.get(name, {}).get("type", "string")
        if kind == "string":
            found = re.search(rf'"?{re.escape(name)}"?\s*[:=]\s*"?([\w.@-]+)', text)
            values[name] = found.group(1) if found else "demo"
            continue
        values[name] = {"integer": 1, "number": 1, "boolean": True, "array": [], "object": {}}.get(
            kind, "demo"
        )
    return json.dumps(values)


def _this_turn(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages after the last user message."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "user":
            return messages[index + 1 :]
    return messages


def _user_text(messages: list[dict[str, Any]]) -> str:
    users = [m for m in messages if m.get("role") == "user"]
    return str(users[-1].get("content") or "") if users else ""


def _tools_called_this_turn(messages: list[dict[str, Any]]) -> set[str]:
    return {
        call["function"]["name"]
        for message in _this_turn(messages)
        for call in message.get("tool_calls") or []
    }


def _tool_results_of_this_turn(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    names = {}
    for message in messages:
        for call in message.get("tool_calls") or []:
            names[call["id"]] = call["function"]["name"]
    return [
        (names.get(m.get("tool_call_id", ""), "tool"), str(m.get("content", "")))
        for m in _this_turn(messages)
        if m.get("role") == "tool"
    ]
