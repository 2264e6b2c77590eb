"""The embedded broker: the outbox table is the queue.

Consumers claim the oldest available row with `FOR UPDATE SKIP LOCKED` and hide it for a
visibility timeout; a crash makes the row visible again, so delivery is at least once.
LISTEN/NOTIFY wakes idle consumers without polling the table.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

from talon.broker.base import Delivery, Handler, Outcome, Result
from talon.broker.outbox import OUTBOX_CHANNEL
from talon.store.database import Database, Tx
from talon.store.notify import Listener

log = logging.getLogger(__name__)
MAX_BACKOFF = timedelta(seconds=60)


class PostgresBroker:
    def __init__(self, db: Database, *, visibility_seconds: float = 60.0) -> None:
        self.db = db
        self.visibility = timedelta(seconds=visibility_seconds)

    def claim(self, topics: tuple[str, ...]) -> Delivery | None:
        return self.claim_or_due(topics)[0]

    def claim_or_due(self, topics: tuple[str, ...]) -> tuple[Delivery | None, float | None]:
        """Claim the next available row; if none, also say in how many seconds one will be
        available (None: the queue is empty). One transaction either way."""
        with self.db.transaction() as tx:
            return self._claim_in(tx, topics)

    def settle(self, delivery: Delivery, result: Result) -> None:
        with self.db.transaction() as tx:
            _settle_in(tx, delivery, result)

    def settle_and_claim(
        self, delivery: Delivery, result: Result, topics: tuple[str, ...]
    ) -> tuple[Delivery | None, float | None]:
        """Settle one delivery and claim the next in the same transaction (one commit
        instead of two per delivery while the queue has work)."""
        with self.db.transaction() as tx:
            _settle_in(tx, delivery, result)
            return self._claim_in(tx, topics)

    def _claim_in(self, tx: Tx, topics: tuple[str, ...]) -> tuple[Delivery | None, float | None]:
        row = tx.one(
            "UPDATE outbox SET attempts = attempts + 1, claimed_until = now() + %s "
            "WHERE id = (SELECT id FROM outbox WHERE published_at IS NULL "
            "AND topic = ANY(%s) AND available_at <= now() "
            "AND (claimed_until IS NULL OR claimed_until < now()) "
            "ORDER BY available_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) "
            "RETURNING id, topic, payload, attempts",
            (self.visibility, list(topics)),
        )
        if row is None:
            return None, _due_in(tx, topics)
        delivery_id = int(row["id"])
        return Delivery(
            str(delivery_id), row["topic"], row["payload"], int(row["attempts"]),
            ack_in=lambda handler_tx: _delete(handler_tx, delivery_id),
        ), None  # fmt: skip

    def run(
        self,
        topics: tuple[str, ...],
        handler: Handler,
        listener: Listener,
        stop: threading.Event,
        *,
        idle_wait: float = 5.0,
    ) -> None:
        """Consume until `stop` is set."""
        failures = 0
        while not stop.is_set():
            try:
                self._step(topics, handler, listener, idle_wait)
                failures = 0
            except Exception as exc:  # the database is down or restarting: back off, go on
                failures += 1
                delay = min(30.0, 0.5 * 2 ** min(failures, 6))
                log.warning("broker loop error (retrying in %.1fs): %s", delay, exc)
                stop.wait(delay)

    def _step(
        self, topics: tuple[str, ...], handler: Handler, listener: Listener, idle_wait: float
    ) -> None:
        delivery, due = self.claim_or_due(topics)
        while delivery is not None:
            try:
                result = handler(delivery)
            except Exception:
                log.exception("handler failed on %s delivery %s", delivery.topic, delivery.id)
                result = Result.retry()
            if result.outcome == Outcome.SETTLED:
                # Acknowledged in the handler's transaction. Only a wake-up token says more
                # work was queued meanwhile; without one, a look would find nothing.
                if not listener.take(OUTBOX_CHANNEL, 0):
                    delivery, due = None, None
                    break
                delivery, due = self.claim_or_due(topics)
                continue
            delivery, due = self.settle_and_claim(delivery, result, topics)
            if delivery is not None:
                # This row's wake-up token would otherwise rouse an idle consumer for nothing.
                listener.take(OUTBOX_CHANNEL, 0)
        # A row committed after our look left a token, so this returns at once then.
        listener.take(OUTBOX_CHANNEL, idle_wait if due is None else min(idle_wait, due))


def _due_in(tx: Tx, topics: tuple[str, ...]) -> float | None:
    seconds = tx.scalar(
        "SELECT EXTRACT(EPOCH FROM min(GREATEST(available_at, "
        "COALESCE(claimed_until, available_at))) - now()) FROM outbox "
        "WHERE published_at IS NULL AND topic = ANY(%s)",
        (list(topics),),
    )
    return None if seconds is None else max(0.0, float(seconds))


def _delete(tx: Tx, delivery_id: int) -> None:
    tx.execute("DELETE FROM outbox WHERE id = %s", (delivery_id,))


def _settle_in(tx: Tx, delivery: Delivery, result: Result) -> None:
    if result.outcome in (Outcome.ACK, Outcome.SETTLED):
        _delete(tx, int(delivery.id))
        return
    at = result.retry_at or datetime.now(UTC) + min(
        MAX_BACKOFF, timedelta(seconds=0.5 * 2 ** min(delivery.attempt, 10))
    )
    tx.execute(
        "UPDATE outbox SET available_at = %s, claimed_until = NULL WHERE id = %s",
        (at, int(delivery.id)),
    )
