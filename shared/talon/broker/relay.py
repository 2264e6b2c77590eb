"""Moves committed outbox rows to an external broker (Pub/Sub).

Called right after the commit that wrote a row (the fast path), and as a sweep for rows a
crashed process left behind, so every committed event is published at least once. A row is
deleted only once its publish stands. A request that waits for its publish deletes its rows
itself before it answers, since on Cloud Run an instance may get no CPU once it has answered.
A request that answers while it runs on (a message posted for its events) publishes in the
background (`in_background`), and the rows that went out are deleted `forget_after` seconds
later, together with every row published meanwhile, in one transaction: a deletion per row
was a commit per turn. A process that dies before deleting leaves its rows to the sweep,
which publishes them again: a duplicate, which consumers settle as they settle Pub/Sub's own.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from functools import partial
from typing import Any, Protocol

from talon.broker.outbox import OutboxRow
from talon.store.database import Database

log = logging.getLogger(__name__)
PUBLISH_TIMEOUT_SECONDS = 30.0
CLOSE_WAIT_SECONDS = 5.0  # within Cloud Run's 10 s between SIGTERM and SIGKILL
# Background publishes not yet answered, at most (the default; `services.py` sets it from the
# publisher's threads). While Pub/Sub does not answer (an outage, a quota), each waits for a
# publishing thread and then up to its 30 s timeout, so an unbounded queue would grow with
# the request rate, and a request's own publish would wait behind it. Beyond the bound, rows
# are left to the sweep, as a crashed process's are.
MAX_IN_BACKGROUND = 64
# Set while the request that commits goes on without waiting for the publish (`in_background`).
_IN_BACKGROUND: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "talon_publish_in_background", default=False
)
_DELETE_SQL = "DELETE FROM outbox WHERE id = ANY(%s)"


class Publisher(Protocol):
    def submit(
        self, topic: str, payload: dict[str, Any], *, key: str, outbox_id: int
    ) -> Future[str]:
        """Start publishing; the future's result is the message id."""
        ...

    def close(self) -> None:
        """Release what publishing holds (threads, channels); nothing is submitted after."""
        ...


class OutboxRelay:
    def __init__(
        self,
        db: Database,
        publisher: Publisher,
        *,
        forget_after: float = 0.5,
        max_in_background: int = MAX_IN_BACKGROUND,
    ) -> None:
        self.db = db
        self.publisher = publisher
        self.forget_after = forget_after  # well below the sweep's age (10 s)
        self._changed = threading.Condition()
        self._published: list[int] = []  # published in the background, not yet deleted
        self._in_flight: set[Future[str]] = set()  # background publishes not yet answered
        self.max_in_background = max_in_background
        self._unanswered = 0  # background publishes handed over (or being), not answered
        self._left_to_sweep = 0  # rows left to the sweep since a background publish went out
        self._closed = False
        self._forgetter: threading.Thread | None = None
        self._deleting = threading.Lock()  # one deletion at a time: close() waits for it

    @staticmethod
    @contextlib.contextmanager
    def in_background() -> Iterator[None]:
        """Commits made inside publish their rows without the committing thread waiting: for
        a request that answers while it goes on running (a message posted for its events
        streams them while its dispatch message is being published; on Cloud Run the open
        response keeps the instance's CPU)."""
        token = _IN_BACKGROUND.set(True)
        try:
            yield
        finally:
            _IN_BACKGROUND.reset(token)

    def on_commit(self, rows: list[OutboxRow]) -> None:
        """The commit hook (`Database.on_commit`)."""
        if _IN_BACKGROUND.get():
            self.publish_in_background(rows)
        else:
            self.publish_committed(rows)

    def publish_committed(self, rows: list[OutboxRow]) -> None:
        """Publish the rows a transaction just committed (announced, so nothing is read
        back), all at once, and wait for them; then delete the ones that went out, with any
        the background has published meanwhile, in one round trip. A row whose publish
        failed stays for the sweep, and the first failure is raised."""
        published, failure = _answered_ids([(row.id, self._submit(row)) for row in rows])
        if published:
            self._delete(published)
        if failure is not None:
            raise failure

    def publish_in_background(self, rows: list[OutboxRow]) -> None:
        """Start publishing the rows and return; each that goes out is deleted within
        `forget_after` seconds (`forget_published`). With `max_in_background` publishes
        unanswered, the rest are left to the sweep (they are committed: nothing is lost)."""
        for row in rows:
            with self._changed:
                full = self._unanswered >= self.max_in_background
                first = full and not self._left_to_sweep
                if full:
                    self._left_to_sweep += 1
                else:
                    self._unanswered += 1  # its slot, taken before the publisher is called
            if full:
                if first:
                    log.warning(
                        "%d background publishes unanswered: outbox row %s and the next ones "
                        "are left to the sweep until one is answered",
                        self.max_in_background, row.id,
                    )  # fmt: skip
                continue
            try:
                future = self._submit(row)
            except BaseException:
                with self._changed:
                    self._unanswered -= 1
                raise
            with self._changed:
                self._in_flight.add(future)
            future.add_done_callback(partial(self._answered, row.id))

    def forget_published(self) -> int:
        """Delete the rows published in the background so far, in one round trip; their
        count. On failure they stay queued for the next call."""
        return self._delete([])

    def close(self, wait_seconds: float = CLOSE_WAIT_SECONDS) -> None:
        """Give background publishes `wait_seconds` to be answered, then delete every row
        that went out (else the sweep publishes them again) and stop the deleting thread."""
        with self._changed:
            in_flight = list(self._in_flight)
        concurrent.futures.wait(in_flight, timeout=wait_seconds)
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            left = self._left_to_sweep
        if left:
            log.warning("closing: %d outbox rows were left to the sweep", left)
        self.forget_published()

    def _submit(self, row: OutboxRow) -> Future[str]:
        return self.publisher.submit(row.topic, row.payload, key=row.key, outbox_id=row.id)

    def _answered(self, row_id: int, future: Future[str]) -> None:
        try:
            future.result()
        except BaseException as exc:
            with self._changed:
                self._in_flight.discard(future)
                self._unanswered -= 1
            log.warning("publishing outbox row %s failed; left for the sweep: %s", row_id, exc)
            return
        # Answered and queued for deletion at once: whoever sees it leave `_in_flight` finds
        # its row among the published.
        with self._changed:
            self._in_flight.discard(future)
            self._unanswered -= 1
            left, self._left_to_sweep = self._left_to_sweep, 0
            self._forget_soon([row_id])
        if left:
            log.warning("Pub/Sub answers again: %d outbox rows were left to the sweep", left)

    def _forget_soon(self, ids: list[int]) -> None:
        with self._changed:
            self._published += ids
            if self._closed:  # nothing deletes them now but the next sweep
                return
            if self._forgetter is None:
                self._forgetter = threading.Thread(
                    target=self._forgetting, name="talon-outbox-forget", daemon=True
                )
                self._forgetter.start()
            self._changed.notify_all()

    def _forgetting(self) -> None:
        while True:
            with self._changed:
                while not self._published and not self._closed:
                    self._changed.wait()
                deadline = time.monotonic() + self.forget_after
                # Rows published meanwhile join this deletion.
                while not self._closed and (left := deadline - time.monotonic()) > 0:
                    self._changed.wait(left)
                if self._closed or self.db.closed:
                    return  # close() deletes what is left
            try:
                self.forget_published()
            except Exception as exc:
                log.warning("deleting published outbox rows failed (retried): %s", exc)

    def _delete(self, ids: list[int]) -> int:
        """Delete `ids` and the rows published in the background so far; on failure they
        all go back to the background's queue."""
        with self._deleting:
            with self._changed:
                ids, self._published = ids + self._published, []
            if not ids:
                return 0
            try:
                with self.db.transaction() as tx:
                    tx.commit_with(_DELETE_SQL, (ids,))
            except BaseException:
                self._forget_soon(ids)
                raise
            return len(ids)

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
                started = [
                    (row["id"], self._submit(OutboxRow(int(row["id"]), row["topic"], row["key"],
                                                       row["payload"])))
                    for row in rows
                ]  # fmt: skip
                sent, failure = _answered_ids(started)
                if sent:
                    tx.execute(_DELETE_SQL, (sent,))
            published += len(sent)
            if failure is not None:
                raise failure
            if len(rows) < 100:
                return published


def _answered_ids(started: list[tuple[int, Future[str]]]) -> tuple[list[int], Exception | None]:
    """Wait for each publish: the ids of the rows that went out, and the first failure."""
    published: list[int] = []
    failure: Exception | None = None
    for row_id, future in started:
        try:
            future.result(timeout=PUBLISH_TIMEOUT_SECONDS)
            published.append(row_id)
        except Exception as exc:
            failure = failure or exc
    return published, failure
