"""Moves committed outbox rows to an external broker (Pub/Sub).

Called right after the commit that wrote a row (the fast path), and as a sweep for rows a
crashed process left behind, so every committed event is published at least once. A row is
deleted only once its publish stands: on the fast path, together with the rows published
around it (within `forget_after` seconds), in one transaction of their own. A commit per
published row was a commit per turn; a process that dies first leaves its rows to the sweep,
which publishes them again (a duplicate, which consumers settle as they settle Pub/Sub's own).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from talon.broker.outbox import OutboxRow
from talon.store.database import Database

log = logging.getLogger(__name__)
# Set while the request that commits goes on without waiting for the publish (`in_background`).
_IN_BACKGROUND: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "talon_publish_in_background", default=False
)


class Publisher(Protocol):
    def publish(self, topic: str, payload: dict[str, Any], *, key: str, outbox_id: int) -> str: ...


class OutboxRelay:
    def __init__(self, db: Database, publisher: Publisher, *, forget_after: float = 0.5) -> None:
        self.db = db
        self.publisher = publisher
        self.forget_after = forget_after  # well below the sweep's age (10 s)
        self._published: list[int] = []  # ids published on the fast path, not yet deleted
        self._changed = threading.Condition()
        self._forgetter: threading.Thread | None = None
        self._publishing: ThreadPoolExecutor | None = None  # for `in_background` commits

    @staticmethod
    @contextlib.contextmanager
    def in_background() -> Iterator[None]:
        """Commits made inside publish their rows from a thread of the relay's, not the
        committing one: for a request that answers while it goes on running (a message
        posted for its events streams them while its dispatch message is being published;
        on Cloud Run the open response keeps the instance's CPU). Any other request waits
        for its publish, since its instance may get no CPU once it has answered."""
        token = _IN_BACKGROUND.set(True)
        try:
            yield
        finally:
            _IN_BACKGROUND.reset(token)

    def on_commit(self, rows: list[OutboxRow]) -> None:
        """The commit hook (`Database.on_commit`): publish now, or in the background."""
        if not _IN_BACKGROUND.get():
            self.publish_committed(rows)
            return
        with self._changed:
            if self._publishing is None:
                self._publishing = ThreadPoolExecutor(2, thread_name_prefix="talon-publish")
            publishing = self._publishing
        publishing.submit(self._publish_logged, rows)

    def _publish_logged(self, rows: list[OutboxRow]) -> None:
        try:
            self.publish_committed(rows)
        except Exception as exc:
            log.warning("publishing outbox rows failed; left for the sweep: %s", exc)

    def publish_committed(self, rows: list[OutboxRow]) -> None:
        """The fast path, for rows a transaction just committed (announced, so nothing is
        read back): publish each; the ones that went out are deleted a moment later. No
        transaction is open across a publish, and none is made here. Should a publish fail,
        the rows from it on stay for the sweep, which takes only rows some seconds old
        (`older_than_seconds`)."""
        published: list[int] = []
        try:
            for row in rows:
                self.publisher.publish(row.topic, row.payload, key=row.key, outbox_id=row.id)
                published.append(row.id)
        finally:
            if published:
                self._forget_soon(published)

    def close(self) -> None:
        """Let the background publishes finish, then delete every published row (else the
        sweep publishes them again)."""
        with self._changed:
            publishing, self._publishing = self._publishing, None
        if publishing is not None:
            publishing.shutdown(wait=True)
        self.forget_published()

    def forget_published(self) -> int:
        """Delete the rows the fast path has published so far, in one round trip; their
        count. On failure they stay queued for the next call."""
        with self._changed:
            ids, self._published = self._published, []
        if not ids:
            return 0
        try:
            with self.db.transaction() as tx:
                tx.commit_with("DELETE FROM outbox WHERE id = ANY(%s)", (ids,))
        except BaseException:
            with self._changed:
                self._published[:0] = ids
            raise
        return len(ids)

    def _forget_soon(self, ids: list[int]) -> None:
        with self._changed:
            self._published += ids
            if self._forgetter is None:
                self._forgetter = threading.Thread(
                    target=self._forgetting, name="talon-outbox-forget", daemon=True
                )
                self._forgetter.start()
            self._changed.notify()

    def _forgetting(self) -> None:
        while not self.db.closed:
            with self._changed:
                while not self._published:
                    self._changed.wait()
            time.sleep(self.forget_after)  # rows published meanwhile join this deletion
            try:
                self.forget_published()
            except Exception as exc:
                log.warning("deleting published outbox rows failed (retried): %s", exc)

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
