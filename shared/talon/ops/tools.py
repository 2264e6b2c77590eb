"""The talon-ops tools, without the MCP SDK: what operators and agents may inspect and do,
checked against the caller's token on every call. Each tool sees only the namespaces the
token may see (a hidden namespace reads exactly like a missing one), write tools need the
write role, and a token minted for a set of tools may call only those."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from talon.auth.principal import Principal
from talon.errors import BadRequest, PermissionDenied, TalonError
from talon.ops.catalog import DEFAULT_HISTORY, MAX_HISTORY, TOOLS
from talon.resources.registry import BY_NAME
from talon.scheduling.timing import next_fire_at
from talon.services import Services
from talon.sessions.usage import UsageQuery, window
from talon.store.resources import namespace_not_found

MAX_LIST = 200
MAX_STEP_OUTPUT_CHARS = 4000


class OpsTools:
    def __init__(self, services: Services) -> None:
        self.services = services

    def check(self, principal: Principal, tool: str) -> None:
        spec = next((t for t in TOOLS if t.name == tool), None)
        if spec is None:
            raise PermissionDenied(f"unknown talon-ops tool {tool!r}")
        if principal.tools is not None and tool not in principal.tools:
            raise PermissionDenied(f"this token may not call {tool!r}")
        if spec.write and not principal.has_role("write"):
            raise PermissionDenied(f"{tool} needs the write role; the token has {principal.role}")

    def _see(self, principal: Principal, namespace: str) -> None:
        if not principal.can_see(namespace):
            raise namespace_not_found(namespace)

    # -- read tools ----------------------------------------------------------------------------

    def list_namespaces(self, principal: Principal) -> dict[str, Any]:
        page = self.services.resources.list(
            BY_NAME["Namespace"], None, limit=MAX_LIST,
            visible_namespaces=principal.visible_namespaces,
        )  # fmt: skip
        names = [r.name for r in page.records if principal.can_see(r.name)]
        return {"namespaces": names}

    def list_agents(self, principal: Principal, namespace: str) -> dict[str, Any]:
        self._see(principal, namespace)
        page = self.services.resources.list(BY_NAME["Agent"], namespace, limit=MAX_LIST)
        return {"agents": [
            {"name": r.name, "template": r.body.get("templateRef"),
             "phase": (r.status or {}).get("phase"), "labels": r.labels}
            for r in page.records
        ]}  # fmt: skip

    def list_sessions(self, principal: Principal, namespace: str, agent: str) -> dict[str, Any]:
        self._see(principal, namespace)
        sessions, _ = self.services.sessions.list(namespace, agent, limit=MAX_LIST, after=None)
        return {"sessions": sessions}

    def list_schedules(self, principal: Principal, namespace: str) -> dict[str, Any]:
        self._see(principal, namespace)
        page = self.services.resources.list(BY_NAME["Schedule"], namespace, limit=MAX_LIST)
        now = datetime.now(UTC)
        return {"schedules": [
            {"name": r.name, "cron": r.body.get("cron"), "timezone": r.body.get("timezone"),
             "enabled": r.body.get("enabled", True), "target": r.body.get("target"),
             "nextFireAt": next_fire_at(r.body, now)}
            for r in page.records
        ]}  # fmt: skip

    def read_session(
        self, principal: Principal, namespace: str, agent: str, session_id: str,
        limit: int = DEFAULT_HISTORY, after: int = 0,
    ) -> dict[str, Any]:  # fmt: skip
        self._see(principal, namespace)
        limit = max(1, min(int(limit), MAX_HISTORY))  # the server's cap, not the caller's
        messages, next_after = self.services.sessions.messages(
            namespace, agent, session_id, after=int(after), limit=limit
        )
        return {"messages": messages, "nextAfter": next_after, "limit": limit}

    def inspect_turn(
        self, principal: Principal, namespace: str, agent: str, session_id: str, turn_id: str
    ) -> dict[str, Any]:
        self._see(principal, namespace)
        turn = self.services.sessions.turn(namespace, agent, session_id, turn_id, outputs=True)
        for step in turn["steps"]:
            step["output"] = _clip(step["output"])
        return turn

    def get_usage(
        self, principal: Principal, namespace: str, agent: str | None = None,
        session_id: str | None = None, since: str | None = None, until: str | None = None,
        group_by: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        self._see(principal, namespace)
        if session_id is not None and agent is None:
            raise BadRequest.at("agent", "is required with session_id")
        query = UsageQuery(window(since, until), group_by=group_by, limit=MAX_LIST)
        return self.services.sessions.usage(namespace, query, agent=agent, session_id=session_id)

    # -- write tools -----------------------------------------------------------------------------

    def trigger_schedule(self, principal: Principal, namespace: str, name: str) -> dict[str, Any]:
        self._see(principal, namespace)
        return self.services.schedules.fire(namespace, name, datetime.now(UTC), "run")

    def pause_schedule(
        self, principal: Principal, namespace: str, name: str, paused: bool = True
    ) -> dict[str, Any]:
        self._see(principal, namespace)
        record = self.services.resources.patch(
            BY_NAME["Schedule"], namespace, name, {"spec": {"enabled": not paused}}
        )
        return {"name": name, "enabled": record.body.get("enabled", True),
                "nextFireAt": next_fire_at(record.body, datetime.now(UTC))}  # fmt: skip

    def run(self, principal: Principal, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """Check the caller, then run `tool`. Raises TalonError with a clear message."""
        self.check(principal, tool)
        method = getattr(self, tool)
        try:
            return method(principal, **arguments)
        except TypeError as exc:  # wrong or missing arguments
            raise TalonError(f"bad arguments for {tool}: {exc}") from exc


def _clip(output: Any) -> Any:
    text = json.dumps(output)
    if len(text) <= MAX_STEP_OUTPUT_CHARS:
        return output
    return {"truncated": True, "preview": text[:MAX_STEP_OUTPUT_CHARS]}
