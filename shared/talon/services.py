"""Wiring: settings -> database -> the services every function uses."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from talon.auth.tokens import TokenService
from talon.broker.relay import OutboxRelay
from talon.config import Settings, load_settings
from talon.resources.service import ResourceService
from talon.scheduling.fires import ScheduleFirer
from talon.sessions.events import EVENTS_CHANNEL
from talon.sessions.service import SessionService
from talon.store.database import Database
from talon.store.migrate import migrate
from talon.store.notify import Listener

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
    relay: OutboxRelay | None = None  # set with the gcp_pubsub broker
    _listener: Listener | None = field(default=None, repr=False)
    _listener_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def start(cls, settings: Settings | None = None, *, run_migrations: bool = True) -> Services:
        settings = settings or load_settings()
        db = Database.from_settings(settings.control_plane.database)
        if run_migrations:
            applied = migrate(db)
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
        relay = _relay(settings, db)
        if relay is not None:
            db.on_outbox = _publish_now(relay)
        sessions = SessionService(db)
        services = cls(
            settings, db, ResourceService(db), TokenService(db), sessions,
            ScheduleFirer(db, sessions), relay,
        )  # fmt: skip
        admin_token = os.environ.get(ADMIN_TOKEN_ENV)
        if admin_token:
            services.tokens.bootstrap_admin(admin_token)
        return services

    def listener(self) -> Listener:
        """The process's LISTEN connection for session events, started on first use."""
        with self._listener_lock:
            if self._listener is None:
                self._listener = Listener(self.db.raw_connect, (EVENTS_CHANNEL,))
                # Readers check the table after LISTEN is in place, so none misses a wake-up.
                self._listener.wait_ready(10)
            return self._listener

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        self.db.close()


def _relay(settings: Settings, db: Database) -> OutboxRelay | None:
    broker = settings.control_plane.message_broker
    if broker.driver != "gcp_pubsub":
        return None
    from talon.broker.pubsub import PubSubPublisher  # Google import only when configured

    return OutboxRelay(db, PubSubPublisher(broker))


def _publish_now(relay: OutboxRelay) -> Callable[[list[int]], None]:
    def publish(ids: list[int]) -> None:
        try:
            relay.flush(ids=ids)
        except Exception as exc:  # committed rows stay in the outbox; the sweep sends them
            log.warning("publishing outbox rows %s failed; left for the sweep: %s", ids, exc)

    return publish
