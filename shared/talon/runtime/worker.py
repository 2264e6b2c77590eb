"""The worker: takes dispatch events from the broker and drives the sessions they name.

A worker holds its liveness lock (`store/liveness.py`) for as long as it lives: other
workers take its turns over the moment its process dies, instead of waiting out the lease.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

from talon.broker.base import Condition, Consumer, Delivery, Result
from talon.broker.outbox import DISPATCH_TOPIC, LIFECYCLE_TOPIC, OUTBOX_CHANNEL
from talon.broker.postgres import PostgresBroker
from talon.resources.service import ResourceService
from talon.runtime.claim import NotTaken
from talon.runtime.dead_letters import fail_dead_lettered
from talon.runtime.orphans import Capacity, OrphanSweep
from talon.runtime.tools.base import ToolSource
from talon.runtime.tools.registry import default_tools
from talon.runtime.turns import RunnerSettings, TurnRunner
from talon.store.database import Database, Tx
from talon.store.liveness import OwnerLock
from talon.store.notify import Listener
from talon.telemetry import tracing
from talon.tenancy.tenant_policy import TenancyPolicy

log = logging.getLogger(__name__)
TOPICS = (DISPATCH_TOPIC, LIFECYCLE_TOPIC)
# How long a delivery waits for this worker's liveness lock (at start-up, or after its
# connection dropped) before it is handed back for a retry.
LOCK_WAIT_SECONDS = 10.0


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(
        self,
        db: Database,
        *,
        tenancy: TenancyPolicy,
        resources: ResourceService,
        tools: ToolSource | None = None,
        skills_dir: Path = Path("skills"),
        demo_fallback: bool = False,
        lease_seconds: float = 30.0,
        max_attempts: int = 5,
        takeover_poll_seconds: float = 0.5,
    ) -> None:
        self.db = db
        self.id = worker_id()
        self.takeover_poll = takeover_poll_seconds
        self.liveness = OwnerLock(db.raw_connect, self.id, closed=lambda: db.closed)
        self.tools = tools if tools is not None else default_tools(db, skills_dir, tenancy)
        self.resources = resources
        self.runner = TurnRunner(
            db,
            self.tools,
            RunnerSettings(
                self.id,
                lease_seconds=lease_seconds,
                demo_fallback=demo_fallback,
                max_attempts=max_attempts,
            ),
            tenancy,
        )

    def close(self) -> None:
        """Release the liveness lock (its turns are then free to be taken over)."""
        self.liveness.close()

    def handle(self, delivery: Delivery) -> Result:
        """Settle one broker delivery. Safe to call twice for the same event."""
        if delivery.dead_lettered:
            if delivery.topic == DISPATCH_TOPIC:
                fail_dead_lettered(self.db, delivery.payload, delivery.attempt)
            else:
                log.error("dead %s event %s dropped: %r", delivery.topic, delivery.id,
                          delivery.payload)  # fmt: skip
            return Result.ack()
        if delivery.topic == DISPATCH_TOPIC:
            # The delivery's span continues the trace of whatever queued the turn (the outbox
            # row carries its traceparent, and the Pub/Sub message as an attribute).
            with tracing.span(
                f"deliver {delivery.topic}", parent=delivery.payload.get("traceparent"),
                kind=tracing.SpanKind.CONSUMER, attributes={
                    "messaging.destination.name": delivery.topic,
                    "messaging.message.id": str(delivery.id),
                    "talon.delivery.attempt": delivery.attempt,
                },
            ):  # fmt: skip
                return self._dispatch(delivery)
        if delivery.topic == LIFECYCLE_TOPIC:
            return self._lifecycle(delivery.payload)
        log.error("dropping event %s on unknown topic %r", delivery.id, delivery.topic)
        return Result.ack()

    def _dispatch(self, delivery: Delivery) -> Result:
        """Drive the session a dispatch event names."""
        if not self.liveness.wait_held(LOCK_WAIT_SECONDS):
            # A lease taken without the lock would look dead to every other worker.
            log.warning("no liveness lock: handing dispatch %s back", delivery.id)
            return Result.retry()
        try:
            session_uid = uuid.UUID(str(delivery.payload["sessionUid"]))
        except (KeyError, ValueError):
            log.error("dropping malformed dispatch event %s: %r", delivery.id, delivery.payload)
            return Result.ack()
        acks: list[Callable[[], bool]] = []
        on_idle = None
        if delivery.ack_in is not None:
            ack_in = delivery.ack_in

            def on_idle(tx: Tx, when: Condition) -> None:
                acks.append(ack_in(tx, when))

        busy = self.runner.drive(session_uid, on_idle=on_idle, first=delivery.claim_in)
        if isinstance(busy, NotTaken):
            return Result.settled()  # another consumer claimed it: not ours to settle
        if busy is not None:
            # Another worker holds the session; look again when its lease would expire,
            # or as soon as that worker dies.
            return Result.retry(busy.until + timedelta(milliseconds=100), holder=busy.owner)
        # Each says whether its deletion committed: drive raises when a final write failed,
        # and a worker fenced out of its turn deleted nothing (the condition checks it).
        return Result.settled() if any(acked() for acked in acks) else Result.ack()

    def take_over(self, session_uid: uuid.UUID) -> Result:
        """Drive a session whose running turn's owner died (the orphan sweep): the same path
        as a dispatch delivery for it, which no broker acknowledges."""
        orphan = {"sessionUid": str(session_uid)}
        return self.handle(Delivery(f"orphan:{session_uid}", DISPATCH_TOPIC, orphan, 1))

    def _lifecycle(self, event: dict[str, Any]) -> Result:
        """A template or MCP server changed: drop what was built from it, re-check agents."""
        kind, namespace, name = event.get("kind"), event.get("namespace"), event.get("name")
        if not (isinstance(kind, str) and isinstance(namespace, str) and isinstance(name, str)):
            log.error("dropping malformed lifecycle event: %r", event)
            return Result.ack()
        self.runner.forget_clients()
        invalidate = getattr(self.tools, "invalidate", None)
        if invalidate is not None:
            invalidate(namespace, kind, name)
        if not event.get("deleted"):
            self.resources.reconcile_dependents(kind, namespace, name)
        log.info("lifecycle: %s %s/%s changed; caches dropped", kind, namespace, name)
        return Result.ack()

    def run_pull(
        self,
        stop: threading.Event,
        *,
        concurrency: int = 4,
        visibility_seconds: float = 60.0,
        schedules: bool = False,
        max_delivery_attempts: int = 10,
        consumer: Consumer | None = None,
    ) -> None:
        """Pull mode (worker.pullMode): consume the PostgreSQL queue (or `consumer`, e.g.
        Pub/Sub subscriptions) until `stop` is set. A delivery claimed by a worker that dies
        is redelivered as soon as its liveness lock is gone, or after `visibility_seconds`
        (Pub/Sub: its ack deadline). With a `consumer`, which keeps a dead worker's messages
        until their ack deadline, an orphan sweep takes the dead worker's turns over within
        about `takeover_poll` seconds (`runtime/orphans.py`)."""
        listener = None
        sweep = None
        if consumer is None:
            broker = PostgresBroker(
                self.db,
                visibility_seconds=visibility_seconds,
                owner=self.id,
                takeover_poll=self.takeover_poll,
                max_attempts=max_delivery_attempts,
            )
            listener = Listener(self.db.raw_connect, (OUTBOX_CHANNEL,))
            listener.wait_ready(10)
            consume = partial(broker.run, TOPICS, self.handle, listener, stop)
        else:
            capacity = Capacity(concurrency)
            sweep = OrphanSweep(self.db, self.id, self.take_over, capacity,
                                poll=self.takeover_poll)  # fmt: skip

            def counted(delivery: Delivery) -> Result:
                with capacity.busy():
                    return self.handle(delivery)

            consume = partial(consumer.consume, counted, stop)
        threads = [
            threading.Thread(
                target=consume,
                kwargs={"concurrency": concurrency},
                name="talon-dispatcher",
                daemon=True,
            )
        ]
        if sweep is not None:
            threads.append(threading.Thread(target=sweep.run, args=(stop,),
                                            name="talon-orphan-sweep", daemon=True))  # fmt: skip
        if schedules:  # the `postgres` scheduler backend runs beside the consumers
            from talon.scheduling.fires import ScheduleFirer
            from talon.scheduling.postgres_backend import LocalScheduler
            from talon.sessions.service import SessionService

            scheduler = LocalScheduler(self.db, ScheduleFirer(self.db, SessionService(self.db)))
            loop = threading.Thread(
                target=scheduler.run, args=(stop,), name="talon-scheduler", daemon=True
            )
            threads.append(loop)
        for thread in threads:
            thread.start()
        log.info("worker pulling %s with %d threads", ", ".join(TOPICS), concurrency)
        try:
            while not stop.wait(1.0):
                if not threads[0].is_alive():  # its consumer failed for good: let it show
                    raise RuntimeError("the broker consumer stopped; see the log above")
        finally:
            if listener is not None:
                listener.close()  # wakes the dispatcher so it sees `stop`
            for thread in threads:
                thread.join(timeout=60)
