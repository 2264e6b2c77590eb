"""The transactional outbox: events are rows written in the same transaction as the state
change they announce, so a committed turn is never left undispatched."""

from __future__ import annotations

from typing import Any

from talon.store.database import Tx, jsonb

DISPATCH_TOPIC = "dispatch"
LIFECYCLE_TOPIC = "lifecycle"
OUTBOX_CHANNEL = "talon_outbox"


def enqueue(tx: Tx, topic: str, payload: dict[str, Any], *, key: str = "") -> int:
    row_id = tx.scalar(
        "INSERT INTO outbox (topic, key, payload) VALUES (%s, %s, %s::jsonb) RETURNING id",
        (topic, key, jsonb(payload)),
    )
    tx.execute("SELECT pg_notify(%s, %s)", (OUTBOX_CHANNEL, topic))
    tx.outbox_ids.append(int(row_id))
    return int(row_id)
