"""The namespace knowledge index in PostgreSQL: chunks written with their document (same
transaction), and retrieval of the best chunks for a turn's input by full-text rank.

Retrieval ORs the input's words (stemmed, stop words dropped) so a question matches the
chunks that share any of its terms, best first; it reads only the turn's namespace.
"""

from __future__ import annotations

import json
from typing import Any

from talon.knowledge.chunking import chunk_document
from talon.store.database import Tx

MAX_CHUNKS = 8


def index_document(tx: Tx, namespace: str, name: str, version: int, spec: dict[str, Any]) -> int:
    """Replace the document's chunks with those of this version; return how many."""
    remove_document(tx, namespace, name)
    chunks = chunk_document(
        str(spec.get("title") or name), spec["content"], spec.get("contentType", "text/markdown")
    )
    if chunks:
        tx.execute(
            "INSERT INTO knowledge_chunks (namespace, document, resource_version, idx, heading, "
            "content) SELECT %s, %s, %s, c.idx, c.heading, c.content FROM jsonb_to_recordset("
            "%s::jsonb) AS c(idx integer, heading text, content text)",
            (namespace, name, version, json.dumps(
                [{"idx": c.index, "heading": c.heading, "content": c.content} for c in chunks]
            )),
        )  # fmt: skip
    return len(chunks)


def remove_document(tx: Tx, namespace: str, name: str) -> None:
    tx.execute(
        "DELETE FROM knowledge_chunks WHERE namespace = %s AND document = %s", (namespace, name)
    )


def retrieve(
    tx: Tx, namespace: str, query: str, *, budget_chars: int, limit: int = MAX_CHUNKS
) -> dict[str, Any]:
    """The chunks that best match `query`, within `budget_chars`: the context text for the
    model and, per document used, its version and the chunks taken (for the stream)."""
    _index_stale_documents(tx, namespace)
    rows = tx.all(
        "WITH q AS (SELECT to_tsquery('simple', string_agg(quote_literal(lexeme), ' | ')) AS "
        "query FROM unnest(tsvector_to_array(to_tsvector('english', %s))) AS lexeme) "
        "SELECT c.document, c.resource_version, c.idx, c.heading, c.content, "
        "ts_rank_cd(c.tsv, q.query) AS rank FROM knowledge_chunks c, q "
        "WHERE q.query IS NOT NULL AND c.namespace = %s AND c.tsv @@ q.query "
        "ORDER BY rank DESC, c.document, c.idx LIMIT %s",
        (query, namespace, limit),
    )
    parts: list[str] = []
    documents: dict[str, dict[str, Any]] = {}
    used = 0
    for row in rows:
        text = f"## {row['heading']}\n{row['content']}"
        if used + len(text) > budget_chars:
            continue
        used += len(text)
        parts.append(text)
        document = documents.setdefault(
            row["document"],
            {"name": row["document"], "resourceVersion": str(row["resource_version"]),
             "chunks": []},
        )  # fmt: skip
        document["chunks"].append(int(row["idx"]))
    return {"documents": list(documents.values()), "context": "\n\n".join(parts)}


def _index_stale_documents(tx: Tx, namespace: str) -> None:
    """Documents written before the index existed (or whose chunks are behind) are indexed
    now, so retrieval never silently misses one."""
    stale = tx.all(
        "SELECT r.name, r.resource_version, r.body FROM resources r WHERE r.kind = 'Knowledge' "
        "AND r.namespace = %s AND NOT EXISTS (SELECT 1 FROM knowledge_chunks c WHERE "
        "c.namespace = r.namespace AND c.document = r.name AND c.idx = 0 "
        "AND c.resource_version = r.resource_version)",
        (namespace,),
    )
    for row in stale:
        index_document(tx, namespace, row["name"], int(row["resource_version"]), row["body"])
