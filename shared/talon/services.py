"""Wiring: settings -> database -> the services every function uses."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from talon.auth.tokens import TOKENS_CHANNEL, TokenService
from talon.broker import outbox
from talon.broker.lifecycle import LifecycleHook
from talon.broker.outbox import OUTBOX_COMMITTED
from talon.broker.relay import OutboxRelay
from talon.config import DatabaseSettings, Settings, load_settings
from talon.knowledge.index_hook import KnowledgeIndexHook
from talon.resources.service import ResourceService
from talon.scheduling.fires import ScheduleFirer
from talon.scheduling.state_hook import ScheduleStateHook
from talon.scheduling.tasks import SCHEDULE_CHANGED, TaskScheduler
from talon.sessions.events import EVENTS_CHANNEL
from talon.sessions.service import SessionService
from talon.sessions.usage import NamespaceUsageHook
from talon.store.connect import connector_from_url
from talon.store.database import Database
from talon.store.migrate import migrate
from talon.store.notify import Listener
from talon.telemetry import metrics
from talon.tenancy.tenant_policy import TenancyPolicy

if TYPE_CHECKING:
    from talon.runtime.worker import Worker

log = logging.getLogger(__name__)
ADMIN_TOKEN_ENV = "TALON_ADMIN_TOKEN"


@dataclass
class Services:
    settings: Settings
    db: Database
    resources: ResourceService
    tokens: TokenService
    sessions: SessionService
    schedules: ScheduleFirer
    tenancy: TenancyPolicy
    relay: OutboxRelay | None = None  # set with the gcp_pubsub broker
    tasks: TaskScheduler | None = None  # set with the cloud_tasks scheduler
    _listener: Listener | None = field(default=None, repr=False)
    _listener_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def start(cls, settings: Settings | None = None, *, run_migrations: bool = True) -> Services:
        settings = settings or load_settings()
        db = _database(settings.control_plane.database)
        if run_migrations:
            applied = migrate(db)
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
        relay = _relay(settings, db)
        if relay is not None:
            # Publish right after commit; rows a failure leaves behind go with the sweep.
            db.on_commit(OUTBOX_COMMITTED, relay.on_commit)
        sessions = SessionService(db)
        firer = ScheduleFirer(db, sessions)
        tasks = _task_scheduler(settings, db, firer)
        if tasks is not None:
            # A written schedule gets its next fire's task right after commit; the
            # scheduler function's sweep enqueues any a failure leaves behind.
            db.on_commit(SCHEDULE_CHANGED, tasks.sync)
        tenancy = TenancyPolicy.from_settings(settings.tenancy)
        resources = resource_service(db, tenancy)
        services = cls(
            settings, db, resources, TokenService(db), sessions, firer, tenancy, relay, tasks
        )
        services.tokens.use_cache(lambda: services.listener().connected)
        admin_token = os.environ.get(ADMIN_TOKEN_ENV)
        if admin_token:
            services.tokens.bootstrap_admin(admin_token)
        return services

    def worker(self, **options: Any) -> Worker:
        """A worker on these services (`options`: Worker's keyword arguments)."""
        from talon.runtime.worker import Worker  # the worker's imports, only where one runs

        return Worker(self.db, tenancy=self.tenancy, resources=self.resources, **options)

    def report_gauges(self) -> None:
        """Gauges read when metrics are collected: the outbox's backlog (the same figure from
        every process: aggregate it with max) and this process's database pool."""

        def backlog() -> list[tuple[str, int, float]]:
            with self.db.transaction() as tx:
                return outbox.backlog(tx)

        metrics.observe("talon.outbox.depth", "{message}", "Outbox rows not yet delivered.",
                        lambda: [(depth, {"topic": t}) for t, depth, _ in backlog()])  # fmt: skip
        metrics.observe("talon.outbox.oldest_age", "s", "Age of the oldest undelivered row.",
                        lambda: [(age, {"topic": t}) for t, _, age in backlog()])  # fmt: skip
        metrics.observe("talon.db.pool.in_use", "{connection}", "Pool connections busy.",
                        lambda: [(self.db.in_use, {"size": self.db.size})])  # fmt: skip

    def listener(self) -> Listener:
        """The process's LISTEN connection (session events, token invalidations), started
        on first use."""
        with self._listener_lock:
            if self._listener is None:
                listener = Listener(self.db.raw_connect, (EVENTS_CHANNEL, TOKENS_CHANNEL))
                listener.watch(TOKENS_CHANNEL, self.tokens.cache.clear)
                # Readers check the table after LISTEN is in place, so none misses a wake-up.
                listener.wait_ready(10)
                self._listener = listener
            return self._listener

    def publishing_in_background(self) -> contextlib.AbstractContextManager[None]:
        """For a request that answers while it runs on: the rows its commits put in the
        outbox are published without it waiting (`OutboxRelay.in_background`)."""
        return contextlib.nullcontext() if self.relay is None else self.relay.in_background()

    def publishing_beside_open_streams(self) -> contextlib.AbstractContextManager[None]:
        """For a request that answers at once (a JSON post): in the background too while this
        process holds an open stream, since Cloud Run gives an instance CPU as long as any
        of its requests runs (the dashboard posts while it follows its session); otherwise
        the request waits for its publish, and deletes its rows, before it answers."""
        listener = self._listener
        if self.relay is not None and listener is not None and listener.subscribers() > 0:
            return self.relay.in_background()  # (no relay: nothing to publish, no count)
        return contextlib.nullcontext()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        if self.relay is not None:
            try:
                self.relay.close()
            except Exception as exc:
                log.warning("deleting published outbox rows at close failed: %s", exc)
            self.relay.publisher.close()
        self.db.close()


def resource_service(db: Database, tenancy: TenancyPolicy) -> ResourceService:
    """The resource service with the policy checks and the per-kind side effects every
    process applies (the gateway's writes and the worker's re-resolution alike)."""
    return ResourceService(
        db,
        checks=[tenancy.check_resource],
        hooks=[ScheduleStateHook(), KnowledgeIndexHook(), LifecycleHook(), NamespaceUsageHook()],
    )


def _database(settings: DatabaseSettings) -> Database:
    """The pool, connecting through the Cloud SQL connector when an instance is named."""
    if settings.instance_connection_name:
        from talon.store.cloudsql import cloud_sql_connector  # Google import when configured

        return Database(cloud_sql_connector(settings), settings.pool_size)
    return Database(connector_from_url(settings.url, settings.connect_timeout_seconds),
                    settings.pool_size)  # fmt: skip


def _relay(settings: Settings, db: Database) -> OutboxRelay | None:
    broker = settings.control_plane.message_broker
    if broker.driver != "gcp_pubsub":
        return None
    from talon.broker.pubsub import PUBLISH_THREADS, PubSubPublisher  # only when configured

    # Four waiting per publishing thread: far above what is in flight while Pub/Sub answers
    # in milliseconds, and a request's own publish waits behind at most that many.
    return OutboxRelay(db, PubSubPublisher(broker), max_in_background=4 * PUBLISH_THREADS)


def _task_scheduler(settings: Settings, db: Database, firer: ScheduleFirer) -> TaskScheduler | None:
    scheduler = settings.control_plane.scheduler
    if scheduler.backend != "cloud_tasks":
        return None
    from talon.scheduling.cloud_tasks import CloudTasksQueue  # Google import only when configured

    return TaskScheduler(db, firer, CloudTasksQueue(scheduler))
