"""The transactional outbox: events are rows written in the same transaction as the state
change they announce, so a committed turn is never left undispatched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from talon.store.database import Tx, jsonb

DISPATCH_TOPIC = "dispatch"
LIFECYCLE_TOPIC = "lifecycle"
OUTBOX_CHANNEL = "talon_outbox"
OUTBOX_COMMITTED = "outbox"  # Tx.announce topic: the OutboxRows a transaction wrote


@dataclass(frozen=True)
class OutboxRow:
    """A row as written, announced to the relay so it can publish without reading it back."""

    id: int
    topic: str
    key: str
    payload: dict[str, Any]


def enqueue(tx: Tx, topic: str, payload: dict[str, Any], *, key: str = "") -> int:
    # The NOTIFY is delivered on commit, so a woken consumer always finds the row.
    row_id = tx.scalar(
        "WITH row AS (INSERT INTO outbox (topic, key, payload) VALUES (%s, %s, %s::jsonb) "
        "RETURNING id) SELECT id FROM row, pg_notify(%s, %s)",
        (topic, key, jsonb(payload), OUTBOX_CHANNEL, topic),
    )
    tx.announce(OUTBOX_COMMITTED, OutboxRow(int(row_id), topic, key, payload))
    return int(row_id)


def backlog(tx: Tx) -> list[tuple[str, int, float]]:
    """Per topic: rows not yet delivered and the age in seconds of the oldest (what an
    operator alerts on when the broker falls behind)."""
    rows = tx.all(
        "SELECT topic, count(*) AS depth, "
        "extract(epoch FROM now() - min(created_at))::float8 AS oldest "
        "FROM outbox WHERE published_at IS NULL AND dead_at IS NULL GROUP BY topic"
    )
    return [(r["topic"], int(r["depth"]), float(r["oldest"])) for r in rows]
