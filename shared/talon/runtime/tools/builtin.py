"""Tools every agent has, named `talon.<tool>`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from talon.runtime.providers.base import ToolSpec
from talon.runtime.tools.base import AgentContext, ToolResult, Toolset

PREFIX = "talon."
_CURRENT_TIME = ToolSpec(
    f"{PREFIX}current_time",
    "The current date and time (ISO 8601), in UTC or in the given IANA time zone. Use it "
    "for anything relative to today, such as 'renewals due in the next 14 days'.",
    {
        "type": "object",
        "properties": {"timezone": {"type": "string", "description": "e.g. America/Los_Angeles"}},
        "additionalProperties": False,
    },
)


class BuiltinTools:
    def tools_for(self, context: AgentContext) -> Toolset:
        return Toolset([_CURRENT_TIME])

    def call(self, context: AgentContext, name: str, arguments: dict[str, Any]) -> ToolResult:
        if name != _CURRENT_TIME.name:
            return ToolResult(f"error: unknown built-in tool {name!r}", is_error=True)
        zone_name = str(arguments.get("timezone") or "UTC")
        try:
            zone = ZoneInfo(zone_name)
        except (ZoneInfoNotFoundError, ValueError):
            return ToolResult(f"error: unknown time zone {zone_name!r}", is_error=True)
        now = datetime.now(UTC).astimezone(zone)
        return ToolResult(json.dumps({"now": now.isoformat(), "timezone": zone_name,
                                      "weekday": now.strftime("%A")}))  # fmt: skip
