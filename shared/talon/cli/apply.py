"""Send manifests to `POST /v1/apply` and report per-object results."""

from __future__ import annotations

import re
from typing import Any

from talon.cli.client import ApiError, TalonClient
from talon.cli.manifest_files import Document

_ITEM_PATH = re.compile(r"^items\[(\d+)\]\.?")


def apply_documents(
    client: TalonClient, documents: list[Document], *, dry_run: bool = False
) -> dict[str, Any]:
    """Apply all documents in one server-side transaction (all or nothing)."""
    try:
        return client.request(
            "POST",
            "/v1/apply",
            json={"items": [d.body for d in documents]},
            params={"dryRun": "true"} if dry_run else None,
        )
    except ApiError as exc:
        raise _with_sources(exc, documents) from exc


def _with_sources(error: ApiError, documents: list[Document]) -> ApiError:
    """Rewrite `items[3].spec.x` into `manifests/agent.yaml#2: spec.x` so users find the line."""

    def locate(path: str) -> str:
        match = _ITEM_PATH.match(path)
        if not match or int(match.group(1)) >= len(documents):
            return path
        rest = path[match.end() :]
        source = documents[int(match.group(1))].source
        return f"{source}: {rest}" if rest else source

    details = [{**d, "path": locate(str(d.get("path", "")))} for d in error.details]
    # The server's message repeats the first details with raw item paths; the details say it all.
    message = error.message.split(": ", 1)[0] if details else error.message
    return ApiError(error.status, error.code, message, details)


def summary_lines(result: dict[str, Any]) -> list[str]:
    suffix = " (dry run)" if result.get("dryRun") else ""
    lines = []
    for item in result.get("items", []):
        kind = item["kind"].lower()
        where = f" -n {item['namespace']}" if item.get("namespace") else ""
        lines.append(f"{kind}/{item['name']}{where} {item['action']}{suffix}")
    return lines
