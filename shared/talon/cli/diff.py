"""`talon diff -f FILE|DIR`: what applying the manifests would change, field by field, from
the server's own dry run (so defaults, resolution and validation are the server's), compared
with the objects as they are now. Exit status as `kubectl diff`: 0 no differences, 1 some, 2
an error."""

from __future__ import annotations

import json
from typing import Any

from talon.cli.apply import apply_documents
from talon.cli.client import plain
from talon.cli.manifest_files import read_documents
from talon.client import Client
from talon.resources.registry import BY_NAME

# Set by the server, not by a manifest: not a difference a user made.
_SERVER_FIELDS = ("uid", "resourceVersion", "generation", "createdAt", "updatedAt")


def field_changes(before: Any, after: Any, path: str = "") -> list[tuple[str, str, Any, Any]]:
    """(op, path, old, new) for each leaf that differs; op is `+`, `-` or `~`."""
    if isinstance(before, dict) and isinstance(after, dict):
        changes = []
        for key in sorted(set(before) | set(after)):
            child = f"{path}.{key}" if path else str(key)
            if key not in before:
                changes.append(("+", child, None, after[key]))
            elif key not in after:
                changes.append(("-", child, before[key], None))
            else:
                changes += field_changes(before[key], after[key], child)
        return changes
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        changes = []
        for index, (old, new) in enumerate(zip(before, after, strict=True)):
            changes += field_changes(old, new, f"{path}[{index}]")
        return changes
    return [] if before == after else [("~", path, before, after)]


def _comparable(manifest: dict[str, Any]) -> dict[str, Any]:
    kind = BY_NAME.get(manifest.get("kind", ""))
    body_field = kind.body_field if kind else "spec"
    metadata = {k: v for k, v in (manifest.get("metadata") or {}).items()
                if k not in _SERVER_FIELDS}  # fmt: skip
    return {"metadata": metadata, body_field: manifest.get(body_field) or {}}


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def diff(client: Client, filenames: list[str]) -> int:
    items = apply_documents(client, read_documents(filenames), dry_run=True)
    differs = False
    for item in items:
        where = f" -n {item.namespace}" if item.namespace else ""
        title = f"{item.kind.lower()}/{item.name}{where}"
        if item.action == "unchanged":
            continue
        differs = True
        if item.action == "created":
            print(f"+ {title} (new)")
            continue
        current = plain(client.get(item.kind, item.name, namespace=item.namespace))
        after = (item.model_extra or {}).get("object") or {}
        print(f"~ {title}")
        for op, path, old, new in field_changes(_comparable(current), _comparable(after)):
            if op == "~":
                print(f"    ~ {path}: {_show(old)} -> {_show(new)}")
            elif op == "+":
                print(f"    + {path}: {_show(new)}")
            else:
                print(f"    - {path}: {_show(old)}")
    return 1 if differs else 0
