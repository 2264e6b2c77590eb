"""How the CLI prints resources: a table by default, or the full object as YAML/JSON."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import yaml

from talon.cli.client import CliError

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


def _labels(item: dict[str, Any]) -> str:
    labels = (item.get("metadata") or {}).get("labels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _effective(item: dict[str, Any]) -> dict[str, Any]:
    return (item.get("status") or {}).get("effective") or {}


# -o wide: more columns, before AGE.
_WIDE: dict[str, list[Column]] = {
    "Agent": [
        ("MCP SERVERS", lambda i: ",".join(_effective(i).get("mcpServerRefs") or [])),
        ("SKILLS", lambda i: ",".join(_effective(i).get("skills") or [])),
    ],
    "Schedule": [("NEXT FIRE", lambda i: (i.get("status") or {}).get("nextFireAt") or "")],
    "MCPBinding": [
        ("AGENTS", lambda i: ",".join(((_spec(i).get("agents") or {}).get("names")) or [])
         or json.dumps(((_spec(i).get("agents") or {}).get("selector")) or {})),
    ],
    "MCPServer": [("TIMEOUT", lambda i: _spec(i).get("timeoutSeconds", ""))],
}  # fmt: skip

FORMATS = ("yaml", "json", "wide", "name")


def output_format(text: str) -> str:
    """`-o`: yaml, json, wide, name or jsonpath=TEMPLATE (kubectl's syntax, `{.metadata.name}`)."""
    if text in FORMATS or text.startswith("jsonpath="):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: one of {', '.join(FORMATS)} or jsonpath=TEMPLATE")


def is_full(fmt: str | None) -> bool:
    """Whether `fmt` prints the objects themselves (not a table or names)."""
    return fmt is not None and (fmt in ("yaml", "json") or fmt.startswith("jsonpath="))


def render(value: Any, fmt: str) -> str:
    if fmt.startswith("jsonpath="):
        return render_jsonpath(fmt[len("jsonpath=") :], value)
    return dump(value, fmt)


_EXPRESSION = re.compile(r"\{([^{}]*)\}")


def render_jsonpath(template: str, value: Any) -> str:
    """kubectl's JSONPath template: each `{expr}` (`.items[*].metadata.name`, filters such as
    `[?(@.kind=="Agent")]`) replaced by what it finds, space separated; text outside braces
    kept, with `\\n` and `\\t` as newline and tab. A bare expression needs no braces."""
    from jsonpath_ng.ext import parse as parse_jsonpath  # only when asked for

    if "{" not in template:
        template = "{" + template + "}"

    def substitute_one(raw: str) -> str:
        expression = raw.strip()
        if len(expression) >= 2 and expression[0] == expression[-1] and expression[0] in "'\"":
            return _unescape(expression[1:-1])  # a literal, as kubectl's {"\n"}
        if expression.startswith("."):
            expression = "$" + expression
        elif not expression.startswith("$"):
            expression = "$." + expression
        try:
            found = [m.value for m in parse_jsonpath(expression).find(value)]
        except Exception as exc:  # jsonpath-ng raises plain Exceptions for some syntax errors
            raise CliError(f"jsonpath {raw!r}: {exc}") from exc
        return " ".join(v if isinstance(v, str) else json.dumps(v) for v in found)

    parts = _EXPRESSION.split(template)  # text, expression, text, ...
    return "".join(_unescape(p) if i % 2 == 0 else substitute_one(p)
                   for i, p in enumerate(parts))  # fmt: skip


def _unescape(text: str) -> str:
    return text.replace("\\n", "\n").replace("\\t", "\t")


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def resource_table(
    kind: str, items: list[dict[str, Any]], *, wide: bool = False, namespaces: bool = False
) -> str:
    columns: list[Column] = []
    if namespaces:
        columns.append(("NAMESPACE", lambda i: i["metadata"].get("namespace", "")))
    columns.append(("NAME", lambda i: i["metadata"]["name"]))
    columns += _COLUMNS.get(kind, [])
    if wide:
        columns += [*_WIDE.get(kind, []), ("LABELS", _labels)]
    columns.append(("AGE", _age))
    return table([[fn(item) for _, fn in columns] for item in items], [h for h, _ in columns])


def dump(value: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(value, indent=2, sort_keys=False)
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True).rstrip("\n")
