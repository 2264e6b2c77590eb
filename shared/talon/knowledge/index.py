"""The namespace knowledge index in PostgreSQL: chunks written with their document (same
transaction), and retrieval of the best chunks for a turn's input by full-text rank.

Retrieval ORs the input's words (stemmed, stop words dropped) so a question matches the
chunks that share any of its terms, best first; it reads only the turn's namespace.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from talon.knowledge.chunking import chunk_document
from talon.store.database import Tx

MAX_CHUNKS = 8

# One statement per turn: the best chunks for the input and, alongside (with their body), any
# of the namespace's documents whose chunks are missing or behind their version. The input
# is parsed into a query only when the namespace has chunks (~1.5 ms for a 10 KB message,
# for nothing without knowledge), asked by the primary key's order (an EXISTS, the namespace
# unknown when planning, was answered by reading every other namespace's chunks). `{given}`
# names the namespace and the input text (`ns`, `input`): the caller's values, or those of
# the turn a worker has just leased (`leased_retrieval`).
_RETRIEVE_TEMPLATE = """
WITH given AS ({given}), stale AS (
    SELECT r.name, r.resource_version, r.body FROM given, LATERAL (
        SELECT name, namespace, resource_version, body FROM resources
        WHERE kind = 'Knowledge' AND namespace = given.ns OFFSET 0) r
    WHERE NOT EXISTS (
        SELECT 1 FROM knowledge_chunks c WHERE c.namespace = r.namespace
        AND c.document = r.name AND c.idx = 0 AND c.resource_version = r.resource_version)
), q AS (
    SELECT to_tsquery('simple', string_agg(quote_literal(lexeme), ' | ')) AS query
    FROM given, unnest(tsvector_to_array(to_tsvector('english', given.input))) AS lexeme
    WHERE (SELECT c.idx FROM knowledge_chunks c WHERE c.namespace = given.ns
           ORDER BY c.document, c.idx LIMIT 1) IS NOT NULL
), hits AS (
    SELECT c.document, c.resource_version, c.idx, c.heading, c.content,
           ts_rank_cd(c.tsv, q.query) AS rank
    FROM knowledge_chunks c, q, given
    WHERE q.query IS NOT NULL AND c.namespace = given.ns AND c.tsv @@ q.query
    ORDER BY rank DESC, c.document, c.idx LIMIT %s
)
SELECT document, resource_version, idx, heading, content, rank, NULL::jsonb AS body FROM hits
UNION ALL
SELECT name, resource_version, NULL, NULL, NULL, NULL, body FROM stale
"""
_RETRIEVE_SQL = _RETRIEVE_TEMPLATE.format(given="SELECT %s::text AS ns, %s::text AS input")
# The namespace and input message of the session's running turn that `owner` leases.
# The input is a scalar subquery so that its message is found by key, not by joining the
# session's messages (see messages._WINDOW_SQL).
_LEASED_RETRIEVE_SQL = _RETRIEVE_TEMPLATE.format(
    given="SELECT s.namespace AS ns, (SELECT m.content FROM messages m "
    "WHERE m.session_uid = t.session_uid AND m.seq = t.input_seq) AS input FROM turns t "
    "JOIN sessions s ON s.uid = t.session_uid "
    "WHERE t.session_uid = %s AND t.state = 'running' AND t.lease_owner = %s "
    "ORDER BY t.seq LIMIT 1"
)


# True when namespace `{ns}` (an SQL expression) has no knowledge at all, no Knowledge
# resource and no chunk (by the primary key's order, as above): any retrieval for it
# returns `nothing_retrieved()`, so a statement can write that without running one. Scalar
# subqueries, so that any plan looks in this namespace only (as an anti-join, a generic
# plan read every namespace's Knowledge resources).
WITHOUT_KNOWLEDGE_SQL = (
    "(SELECT 1 FROM resources k WHERE k.kind = 'Knowledge' AND k.namespace = {ns} "
    "LIMIT 1) IS NULL "
    "AND (SELECT c.idx FROM knowledge_chunks c WHERE c.namespace = {ns} "
    "ORDER BY c.document, c.idx LIMIT 1) IS NULL"
)


def nothing_retrieved() -> dict[str, Any]:
    """What `retrieve` returns when nothing matches (a fresh dict: callers may keep it)."""
    return {"documents": [], "context": ""}


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
    rows = tx.all(_RETRIEVE_SQL, (namespace, query, limit))
    return retrieved(tx, namespace, query, rows, budget_chars=budget_chars, limit=limit)


def leased_retrieval(
    session_uid: uuid.UUID, owner: str, limit: int = MAX_CHUNKS
) -> tuple[str, tuple[Any, ...]]:
    """The retrieval statement for the input of the session's running turn that `owner`
    leases, to send with the claim that leases it (no round trip of its own); its rows go to
    `retrieved`. No rows when nothing is leased."""
    return _LEASED_RETRIEVE_SQL, (session_uid, owner, limit)


def retrieved(
    tx: Tx,
    namespace: str,
    query: str,
    rows: list[dict[str, Any]],
    *,
    budget_chars: int,
    limit: int = MAX_CHUNKS,
) -> dict[str, Any]:
    """`retrieve`'s answer from its statement's `rows` (for `namespace` and `query`)."""
    stale = [row for row in rows if row["body"] is not None]
    if stale:
        # Documents written before the index existed (or whose chunks are behind): index them
        # now and look again, so retrieval never silently misses one.
        for row in stale:
            index_document(tx, namespace, row["document"], int(row["resource_version"]),
                           row["body"])  # fmt: skip
        rows = tx.all(_RETRIEVE_SQL, (namespace, query, limit))
    hits = sorted(
        (row for row in rows if row["body"] is None),
        key=lambda r: (-float(r["rank"]), r["document"], int(r["idx"])),
    )
    parts: list[str] = []
    documents: dict[str, dict[str, Any]] = {}
    used = 0
    for row in hits:
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
