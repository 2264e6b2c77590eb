"""Send manifests to `POST /v1/apply` and report per-object results."""

from __future__ import annotations

import re

from talon.cli.manifest_files import Document
from talon.client import APIError, ApplyResult, Client

_ITEM_PATH = re.compile(r"^items\[(\d+)\]\.?")


def apply_documents(
    client: Client, documents: list[Document], *, dry_run: bool = False
) -> list[ApplyResult]:
    """Apply all documents in one server-side transaction (all or nothing)."""
    try:
        return client.apply([d.body for d in documents], dry_run=dry_run)
    except APIError as exc:
        raise _with_sources(exc, documents) from exc


def _with_sources(error: APIError, documents: list[Document]) -> APIError:
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
    return type(error)(error.status, error.code, message, details)


def summary_lines(items: list[ApplyResult], *, dry_run: bool) -> list[str]:
    suffix = " (dry run)" if dry_run else ""
    lines = []
    for item in items:
        where = f" -n {item.namespace}" if item.namespace else ""
        lines.append(f"{item.kind.lower()}/{item.name}{where} {item.action}{suffix}")
    return lines
