"""Moves committed outbox rows to an external broker (Pub/Sub).

Called right after the commit that wrote a row (the fast path), and as a sweep for rows a
crashed process left behind, so every committed event is published at least once.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from talon.store.database import Database

log = logging.getLogger(__name__)


class Publisher(Protocol):
    def publish(self, topic: str, payload: dict[str, Any], *, key: str, outbox_id: int) -> str: ...


class OutboxRelay:
    def __init__(self, db: Database, publisher: Publisher) -> None:
        self.db = db
        self.publisher = publisher

    def flush(self, *, ids: list[int] | None = None, older_than_seconds: float = 0.0) -> int:
        """Publish pending rows (these `ids`, or all older than the given age); return the
        count. Rows are locked while publishing, so concurrent relays never double-send."""
        published = 0
        while True:
            with self.db.transaction() as tx:
                filters, params = "", []
                if ids is not None:
                    filters = " AND id = ANY(%s)"
                    params.append(ids)
                rows = tx.all(
                    # Dead rows (the postgres broker's dead letters) are not published.
                    "SELECT id, topic, key, payload FROM outbox WHERE published_at IS NULL "
                    "AND dead_at IS NULL "
                    "AND created_at <= now() - make_interval(secs => %s)" + filters +
                    " ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED",
                    [older_than_seconds, *params],
                )  # fmt: skip
                for row in rows:
                    self.publisher.publish(
                        row["topic"], row["payload"], key=row["key"], outbox_id=int(row["id"])
                    )
                    tx.execute("DELETE FROM outbox WHERE id = %s", (row["id"],))
                    published += 1
            if ids is not None or len(rows) < 100:
                return published
