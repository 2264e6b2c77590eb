"""Cloud SQL adapter: connections through the Cloud SQL Python Connector (pg8000 driver)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
            ip_type=_IP_TYPES[settings.ip_type],
            enable_iam_auth=settings.iam_auth,
            **driver_arguments(settings),
        )

    return connect


def driver_arguments(settings: DatabaseSettings) -> dict[str, Any]:
    """What the connector hands pg8000 with the TLS socket it opened to the instance.
    `ssl_context=False`: the socket is already TLS to the instance's server-side proxy, so
    pg8000 must not ask for TLS again; by default it builds an SSL context for every
    connection (~17 ms of CPU loading the system's CA certificates) and spends a round trip
    on an SSLRequest the proxy declines."""
    return {
        "user": settings.user,
        "password": settings.password or None,
        "db": settings.name,
        "timeout": int(settings.connect_timeout_seconds),
        "ssl_context": False,
    }
