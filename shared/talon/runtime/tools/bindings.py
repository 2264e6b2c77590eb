"""Which MCP tools an agent may use: bindings that name the agent (or select it by labels)
grant a server's tools, filtered by the binding's allow/deny globs and read-only flag.
Pure functions over manifests, so the policy is tested without any server."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Grant:
    """One binding's permission for one agent on one server."""

    binding: str
    allow: tuple[str, ...] | None  # None: every tool not denied
    deny: tuple[str, ...]
    read_only: bool

    def permits(self, tool: str, read_only_hint: bool | None) -> bool:
        if self.read_only and read_only_hint is not True:
            return False  # a read-only binding admits only tools that declare themselves so
        if any(fnmatch.fnmatchcase(tool, pattern) for pattern in self.deny):
            return False
        return self.allow is None or any(fnmatch.fnmatchcase(tool, p) for p in self.allow)


def binding_matches(spec: dict[str, Any], agent: str, labels: dict[str, str]) -> bool:
    subjects = spec.get("agents", {})
    if agent in subjects.get("names", []):
        return True
    selector = subjects.get("selector")
    if selector is None:
        return False
    wanted = selector.get("matchLabels", {})
    return all(labels.get(key) == value for key, value in wanted.items())


def grants_for(
    bindings: list[tuple[str, dict[str, Any]]], agent: str, labels: dict[str, str]
) -> dict[str, list[Grant]]:
    """Server name -> the grants of every binding (name, spec) that covers `agent`."""
    grants: dict[str, list[Grant]] = {}
    for name, spec in bindings:
        if not binding_matches(spec, agent, labels):
            continue
        policy = spec.get("tools", {})
        allow = policy.get("allow")
        grants.setdefault(spec["server"], []).append(
            Grant(
                name,
                tuple(allow) if allow is not None else None,
                tuple(policy.get("deny", [])),
                bool(spec.get("readOnly", True)),
            )
        )
    return grants


def permitted(grants: list[Grant], tool: str, read_only_hint: bool | None) -> bool:
    """Bindings add up: a tool is usable if any binding for its server permits it."""
    return any(grant.permits(tool, read_only_hint) for grant in grants)
