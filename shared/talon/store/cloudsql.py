"""Cloud SQL adapter: connections through the Cloud SQL Python Connector (pg8000 driver)."""

from __future__ import annotations

from collections.abc import Callable

from google.cloud.sql.connector import Connector, IPTypes, RefreshStrategy

from talon.config import DatabaseSettings
from talon.store.database import Connection

_IP_TYPES = {"private": IPTypes.PRIVATE, "public": IPTypes.PUBLIC, "psc": IPTypes.PSC}


def cloud_sql_connector(settings: DatabaseSettings) -> Callable[[], Connection]:
    # LAZY refresh suits serverless: no background refresh while the instance is throttled.
    connector = Connector(refresh_strategy=RefreshStrategy.LAZY)

    def connect() -> Connection:
        return connector.connect(
            settings.instance_connection_name,
            "pg8000",
            user=settings.user,
            password=settings.password or None,
            db=settings.name,
            ip_type=_IP_TYPES[settings.ip_type],
            enable_iam_auth=settings.iam_auth,
            timeout=int(settings.connect_timeout_seconds),
        )

    return connect
