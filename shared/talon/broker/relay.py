"""Moves committed outbox rows to an external broker (Pub/Sub).

Called right after the commit that wrote a row (the fast path), and as a sweep for rows a
crashed process left behind, so every committed event is published at least once. A row is
deleted only once its publish stands.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from talon.broker.outbox import OutboxRow
from talon.store.database import Database

log = logging.getLogger(__name__)


class Publisher(Protocol):
    def publish(self, topic: str, payload: dict[str, Any], *, key: str, outbox_id: int) -> str: ...


class OutboxRelay:
    def __init__(self, db: Database, publisher: Publisher) -> None:
        self.db = db
        self.publisher = publisher

    def publish_committed(self, rows: list[OutboxRow]) -> None:
        """The fast path, for rows a transaction just committed (announced, so nothing is
        read back): publish each, then delete the published ones in one round trip. No
        transaction stays open across a publish. Should a publish fail, the rows from it on
        stay for the sweep, which takes only rows some seconds old (`older_than_seconds`),
        so both publish a row only when this path was that late: a duplicate, which
        consumers settle as they settle Pub/Sub's own."""
        published: list[int] = []
        try:
            for row in rows:
                self.publisher.publish(row.topic, row.payload, key=row.key, outbox_id=row.id)
                published.append(row.id)
        finally:
            if published:
                with self.db.transaction() as tx:
                    tx.commit_with("DELETE FROM outbox WHERE id = ANY(%s)", (published,))

    def flush(self, *, older_than_seconds: float = 0.0) -> int:
        """The sweep: publish pending rows older than the given age; return the count. Rows
        are locked while publishing, so concurrent sweeps never double-send."""
        published = 0
        while True:
            with self.db.transaction() as tx:
                rows = tx.all(
                    # Dead rows (the postgres broker's dead letters) are not published.
                    "SELECT id, topic, key, payload FROM outbox WHERE published_at IS NULL "
                    "AND dead_at IS NULL AND created_at <= now() - make_interval(secs => %s) "
                    "ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED",
                    (older_than_seconds,),
                )
                for row in rows:
                    self.publisher.publish(
                        row["topic"], row["payload"], key=row["key"], outbox_id=int(row["id"])
                    )
                    tx.execute("DELETE FROM outbox WHERE id = %s", (row["id"],))
                    published += 1
            if len(rows) < 100:
                return published
