"""The embedded broker: the outbox table is the queue.

One dispatcher per process claims the oldest available rows with `FOR UPDATE SKIP LOCKED`,
as many as it has idle handlers, and hides them for a visibility timeout (a crash makes a row
visible again, so delivery is at least once); handlers run on a pool. The dispatcher notes the
listener's notification count before each claim and, when the claim comes back short (the
queue had no more for it), sleeps until the count moves past that mark: a row committed after
the claim's snapshot is always notified after it, so no wake-up is lost, and idle handlers
are not all woken by every row.

Notified rows skip the dispatcher's claim: a message's dispatch row is notified as
"dispatch <id> <payload>" (`sessions/turn_queue.py`), and the dispatcher hands it to an idle
handler unclaimed (`Delivery.claim_in`); the handler claims it in its own first transaction,
in the same round trip as the turn (`runtime/claim.py`), so a turn costs one transaction
less. With several dispatchers notified of one row, one handler's claim takes it and the
others do nothing. A claim still runs at start, for any other notification (another
topic, a reconnect, more rows than idle handlers), when a wait times out, and at least every
`takeover_poll` while rows were handed out (a dead worker's rows are only found by a
claim); it skips the rows this dispatcher handed out and its handlers have not claimed yet.

A claimed row records its holder (`claimed_by`, the worker's liveness owner id) and is
available again as soon as that holder's liveness lock is gone (`store/liveness.py`), not
only after its visibility timeout: a crashed worker's deliveries come back within about
`takeover_poll` seconds. No process is told of a death, so while any row is pending (held,
or waiting for its time) a dispatcher with idle handlers looks again every `takeover_poll`
seconds; with the queue empty it only waits for notifications.

Dead letters: every claim counts an attempt. A row claimed more than `max_attempts` times
(its handler kept failing, or its workers kept dying) is handed to the handler once more as a
dead letter (`Delivery.dead_lettered`: the worker fails the turn it names, with the reason in
the session's stream) and then marked dead, kept for inspection and never claimed again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial

from talon.backoff import backoff_delay
from talon.broker.base import Condition, Delivery, DeliveryClaim, Handler, Outcome, Result
from talon.broker.notified import Hints, note, wait_beyond
from talon.broker.outbox import OUTBOX_CHANNEL
from talon.store.database import Database, Tx
from talon.store.liveness import owner_gone_sql
from talon.store.notify import Listener

log = logging.getLogger(__name__)
MAX_BACKOFF = timedelta(seconds=60)

# Claim up to %s rows (free, or held by a dead worker: the CASE asks about the holder only
# for a row still hidden) and, in the same statement, say when the next row that was not
# taken becomes available (rows this statement claims are excluded: the outer query sees
# them as they were before).
_CLAIM_SQL = f"""
WITH picked AS (
    SELECT id FROM outbox
    WHERE published_at IS NULL AND dead_at IS NULL AND topic = ANY(%s) AND available_at <= now()
      AND id <> ALL(%s::bigint[])  -- rows this dispatcher handed out unclaimed
      AND CASE WHEN claimed_until IS NULL OR claimed_until < now() THEN true
               WHEN claimed_by IS NULL THEN false
               -- Our own rows are never a dead worker's, even before our lock is held (a
               -- worker starting up would otherwise take its own rows twice).
               WHEN claimed_by = %s THEN false
               ELSE {owner_gone_sql("claimed_by")} END
    ORDER BY available_at, id LIMIT %s FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE outbox o SET attempts = o.attempts + 1, claimed_until = now() + %s,
           claimed_by = %s
    FROM picked WHERE o.id = picked.id
    RETURNING o.id, o.topic, o.payload, o.attempts, o.available_at
)
SELECT id, topic, payload, attempts, NULL::float8 AS due FROM claimed
UNION ALL
SELECT NULL, NULL, NULL, NULL,
       EXTRACT(EPOCH FROM min(GREATEST(available_at, COALESCE(claimed_until, available_at)))
                          - now())::float8
FROM outbox
WHERE published_at IS NULL AND dead_at IS NULL AND topic = ANY(%s)
  AND id NOT IN (SELECT id FROM claimed) AND id <> ALL(%s::bigint[])
"""


# Claim one notified row by id, only while nobody has tried it yet (a row that came back goes
# through `_CLAIM_SQL`, which counts its attempts against `max_attempts`).
_CLAIM_ONE_SQL = """
UPDATE outbox SET attempts = 1, claimed_until = now() + %s, claimed_by = %s
WHERE id = (SELECT id FROM outbox WHERE id = %s AND attempts = 0 AND claimed_until IS NULL
              AND published_at IS NULL AND dead_at IS NULL AND available_at <= now()
            FOR UPDATE SKIP LOCKED)
RETURNING id
"""
# ...and, in the same transaction's later statements, whether it did: the row's version is
# this transaction's own only if that claim updated it (`_if_assigned`: a transaction that
# has written nothing gets no transaction id, and no commit record to flush, for asking).
_CLAIMED_HERE_SQL = (
    "EXISTS (SELECT 1 FROM outbox WHERE id = %s AND xmin = pg_current_xact_id_if_assigned()::xid)"
)


@dataclass
class _Unclaimed:
    """A notified row handed to a handler before it is claimed: the handler's first
    transaction claims it (`__call__`); `taken` says whether it did."""

    broker: PostgresBroker
    row_id: int
    pending: set[int]  # the dispatcher's rows handed out and not yet claimed
    lock: threading.Condition  # ...guarded by this
    taken: bool = False

    def __call__(self, tx: Tx) -> DeliveryClaim:
        params = (self.broker.visibility, self.broker.owner or None, self.row_id)
        claimed = tx.later(_CLAIM_ONE_SQL, params)  # sent with the handler's next statement

        def taken() -> bool:
            if claimed.rows is None:
                raise RuntimeError("asked before the delivery's claim was sent")
            self.taken = bool(claimed.rows)
            return self.taken

        return DeliveryClaim(Condition(_CLAIMED_HERE_SQL, (self.row_id,)), taken)

    def done(self) -> None:
        """The handler is done with it (claimed or not): the dispatcher's claims may take
        the row again."""
        with self.lock:
            self.pending.discard(self.row_id)


class PostgresBroker:
    def __init__(
        self,
        db: Database,
        *,
        visibility_seconds: float = 60.0,
        owner: str = "",
        takeover_poll: float = 0.5,
        max_attempts: int = 10,
    ) -> None:
        """`owner`: this process's liveness owner id (`store/liveness.py`), recorded on the
        rows it claims; empty for a consumer without a liveness lock (its rows then come
        back only after `visibility_seconds`)."""
        self.db = db
        self.visibility = timedelta(seconds=visibility_seconds)
        self.owner = owner
        self.takeover_poll = takeover_poll
        self.max_attempts = max_attempts

    def claim(
        self, topics: tuple[str, ...], limit: int = 1, *, excluding: Collection[int] = ()
    ) -> tuple[list[Delivery], float | None]:
        """Claim up to `limit` available rows, oldest first, except the rows `excluding`;
        also say in how many seconds the next row not claimed becomes available (None: no
        other row). One transaction."""
        owner = self.owner or None
        with self.db.transaction() as tx:
            rows = tx.all(_CLAIM_SQL, (list(topics), list(excluding), owner, limit,
                                       self.visibility, owner, list(topics),
                                       list(excluding)))  # fmt: skip
        deliveries, due = [], None
        for row in rows:
            if row["id"] is None:
                due = None if row["due"] is None else max(0.0, float(row["due"]))
                continue
            delivery_id = int(row["id"])
            deliveries.append(Delivery(
                str(delivery_id), row["topic"], row["payload"], int(row["attempts"]),
                ack_in=partial(_delete, delivery_id),
            ))  # fmt: skip
        deliveries.sort(key=lambda d: int(d.id))
        return deliveries, due

    def settle(self, delivery: Delivery, result: Result) -> None:
        if result.outcome == Outcome.SETTLED:
            return  # acknowledged in the handler's own transaction
        with self.db.transaction() as tx:
            _settle_in(tx, delivery, result)

    def mark_dead(self, delivery: Delivery) -> None:
        """Keep the row for inspection; it is never claimed again."""
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE outbox SET dead_at = now(), claimed_until = NULL WHERE id = %s",
                (int(delivery.id),),
            )
        log.warning("%s event %s dead after %d deliveries: %r", delivery.topic, delivery.id,
                    delivery.attempt, delivery.payload)  # fmt: skip

    def run(
        self,
        topics: tuple[str, ...],
        handler: Handler,
        listener: Listener,
        stop: threading.Event,
        *,
        concurrency: int = 4,
        idle_wait: float = 5.0,
    ) -> None:
        """Dispatch to `concurrency` handlers until `stop` is set, then let them finish."""
        idle = threading.Semaphore(concurrency)
        failures = 0
        hints = Hints()
        listener.watch(OUTBOX_CHANNEL, partial(note, hints, topics))
        wait = idle_wait  # how long to sleep when nothing is notified (the last claim's)
        claimed_at = time.monotonic()
        handed_out = False  # rows handed out unclaimed since the last claim
        unclaimed_ids: set[int] = set()  # ...and not yet claimed by their handlers
        with ThreadPoolExecutor(concurrency, thread_name_prefix="talon-handler") as pool:
            while not stop.is_set():
                if not idle.acquire(timeout=0.5):
                    continue
                free = 1
                while free < concurrency and idle.acquire(blocking=False):
                    free += 1
                seen, notified, claiming = hints.take(free)
                if not claiming:
                    for _ in range(free - len(notified)):
                        idle.release()
                    for row_id, topic, payload in notified:
                        unclaimed = _Unclaimed(self, row_id, unclaimed_ids, hints.cond)
                        with hints.cond:
                            unclaimed_ids.add(row_id)
                        delivery = Delivery(
                            str(row_id), topic, payload, 1,
                            ack_in=partial(_delete, row_id), claim_in=unclaimed,
                        )  # fmt: skip
                        pool.submit(self._handle, delivery, handler, idle, unclaimed)
                        handed_out = True
                    # Rows handed out unclaimed may be pending (and whoever took one may
                    # die): a claim looks at the whole queue within the takeover poll, even
                    # while notified rows keep coming.
                    if handed_out and time.monotonic() - claimed_at >= self.takeover_poll:
                        hints.ask_claim()
                    elif not notified:
                        timeout = min(wait, self.takeover_poll) if handed_out else wait
                        if not wait_beyond(hints, seen, timeout, stop):
                            hints.ask_claim()
                    continue
                try:
                    with hints.cond:  # handlers drop their rows from it as they finish
                        excluding = list(unclaimed_ids)
                    deliveries, due = self.claim(topics, free, excluding=excluding)
                    failures = 0
                    claimed_at, handed_out = time.monotonic(), False
                except Exception as exc:  # the database is down or restarting: back off
                    for _ in range(free):
                        idle.release()
                    hints.ask_claim()
                    failures += 1
                    delay = backoff_delay(failures, initial=0.5, maximum=30.0)
                    log.warning("broker claim failed (retrying in %.1fs): %s", delay, exc)
                    stop.wait(delay)
                    continue
                for _ in range(free - len(deliveries)):
                    idle.release()
                for delivery in deliveries:
                    pool.submit(self._handle, delivery, handler, idle)
                # With rows pending, their holder may die, and nobody would tell us.
                wait = idle_wait if due is None else min(idle_wait, due, self.takeover_poll)
                if len(deliveries) < free:
                    # The queue had nothing more for us at the claim's snapshot: whatever
                    # commits later is notified after `seen`.
                    if not wait_beyond(hints, seen, wait, stop):
                        hints.ask_claim()
                else:
                    hints.ask_claim()  # there may be more

    def _handle(
        self,
        delivery: Delivery,
        handler: Handler,
        idle: threading.Semaphore,
        unclaimed: _Unclaimed | None = None,
    ) -> None:
        try:
            dead = delivery.attempt > self.max_attempts
            if dead:  # its deliveries ran out: the handler settles it as a dead letter
                delivery = replace(delivery, attempt=delivery.attempt - 1, dead_lettered=True)
            try:
                result = handler(delivery)
            except Exception:
                log.exception("handler failed on %s delivery %s", delivery.topic, delivery.id)
                result = Result.retry()
            if unclaimed is not None and not unclaimed.taken:
                return  # another consumer claimed it (or nothing did): not ours to settle
            try:
                if dead and result.outcome != Outcome.RETRY:
                    self.mark_dead(delivery)
                else:
                    self.settle(delivery, result)
            except Exception as exc:  # the row stays claimed and comes back after the timeout
                log.warning("could not settle delivery %s: %s", delivery.id, exc)
        finally:
            if unclaimed is not None:
                unclaimed.done()
            idle.release()


def _delete(delivery_id: int, tx: Tx, when: Condition | None = None) -> Callable[[], bool]:
    # Nothing waits for it: it travels with the transaction's next statement or its COMMIT.
    condition = Condition("TRUE", ()) if when is None else when
    deleted = tx.later(f"DELETE FROM outbox WHERE id = %s AND ({condition.sql}) RETURNING 1",
                       (delivery_id, *condition.params))  # fmt: skip
    return lambda: tx.committed and bool(deleted.rows)  # not a deletion rolled back later


def _settle_in(tx: Tx, delivery: Delivery, result: Result) -> None:
    if result.outcome == Outcome.ACK:
        _delete(int(delivery.id), tx)
        return
    delay = backoff_delay(delivery.attempt, initial=0.5, maximum=MAX_BACKOFF.total_seconds())
    at = result.retry_at or datetime.now(UTC) + timedelta(seconds=delay)
    if result.holder:
        # Waiting on another worker's turn: hidden until `at`, or until that worker dies.
        tx.execute(
            "UPDATE outbox SET claimed_until = %s, claimed_by = %s WHERE id = %s",
            (at, result.holder, int(delivery.id)),
        )
        return
    tx.execute(
        "UPDATE outbox SET available_at = %s, claimed_until = NULL, claimed_by = NULL "
        "WHERE id = %s",
        (at, int(delivery.id)),
    )
