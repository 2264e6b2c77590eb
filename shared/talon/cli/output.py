"""How the CLI prints resources: a table by default, or the full object as YAML/JSON."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import yaml

Column = tuple[str, Callable[[dict[str, Any]], Any]]


def _spec(item: dict[str, Any]) -> dict[str, Any]:
    return item.get("spec") or {}


def _age(item: dict[str, Any]) -> str:
    stamp = (item.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return ""
    try:
        created = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return ""
    seconds = max(0, int((datetime.now(UTC) - created).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


_COLUMNS: dict[str, list[Column]] = {
    "Namespace": [("DESCRIPTION", lambda i: _spec(i).get("description", ""))],
    "AgentTemplate": [
        (
            "PROFILES",
            lambda i: ",".join(
                p["name"]
                for p in (i.get("definition") or {}).get("modelPolicy", {}).get("profiles", [])
            ),
        ),
        ("MCP SERVERS", lambda i: ",".join((i.get("definition") or {}).get("mcpServerRefs", []))),
    ],
    "Agent": [
        ("TEMPLATE", lambda i: _spec(i).get("templateRef", "")),
        ("PHASE", lambda i: (i.get("status") or {}).get("phase", "")),
    ],
    "Schedule": [
        ("KIND", lambda i: _spec(i).get("kind", "")),
        ("WHEN", lambda i: _spec(i).get("cron") or _spec(i).get("at") or ""),
        ("TIMEZONE", lambda i: _spec(i).get("timezone", "")),
        (
            "TARGET",
            lambda i: "/".join(
                filter(
                    None,
                    [
                        _spec(i).get("target", {}).get("agent"),
                        _spec(i).get("target", {}).get("sessionId"),
                    ],
                )
            ),
        ),
        ("ENABLED", lambda i: str(_spec(i).get("enabled", "")).lower()),
    ],
    "Knowledge": [("TITLE", lambda i: _spec(i).get("title", ""))],
    "MCPServer": [("URL", lambda i: _spec(i).get("url", ""))],
    "MCPBinding": [
        ("SERVER", lambda i: _spec(i).get("server", "")),
        ("READ-ONLY", lambda i: str(_spec(i).get("readOnly", "")).lower()),
    ],
}


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def resource_table(kind: str, items: list[dict[str, Any]]) -> str:
    columns: list[Column] = [("NAME", lambda i: i["metadata"]["name"])]
    columns += _COLUMNS.get(kind, [])
    columns.append(("AGE", _age))
    return table([[fn(item) for _, fn in columns] for item in items], [h for h, _ in columns])


def dump(value: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(value, indent=2, sort_keys=False)
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True).rstrip("\n")
