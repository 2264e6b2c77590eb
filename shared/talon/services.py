"""Wiring: settings -> database -> the services every function uses."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from talon.auth.tokens import TokenService
from talon.config import Settings, load_settings
from talon.resources.service import ResourceService
from talon.store.database import Database
from talon.store.migrate import migrate

log = logging.getLogger(__name__)
ADMIN_TOKEN_ENV = "TALON_ADMIN_TOKEN"


@dataclass
class Services:
    settings: Settings
    db: Database
    resources: ResourceService
    tokens: TokenService

    @classmethod
    def start(cls, settings: Settings | None = None, *, run_migrations: bool = True) -> Services:
        settings = settings or load_settings()
        db = Database.from_settings(settings.control_plane.database)
        if run_migrations:
            applied = migrate(db)
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
        services = cls(settings, db, ResourceService(db), TokenService(db))
        admin_token = os.environ.get(ADMIN_TOKEN_ENV)
        if admin_token:
            services.tokens.bootstrap_admin(admin_token)
        return services

    def close(self) -> None:
        self.db.close()
