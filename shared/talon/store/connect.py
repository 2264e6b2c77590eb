"""Connections from a `postgresql://` URL, for `Database` (the Cloud SQL connector's are in
`cloudsql.py`): TCP with Nagle's algorithm off, or a unix socket, and TLS as `sslmode` says."""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import pg8000.dbapi

from talon.errors import TalonError
from talon.store.database import Connection


def connector_from_url(url: str, timeout: float) -> Callable[[], Connection]:
    """postgresql://user:pass@host:port/db[?unix_sock=/path/.s.PGSQL.5432][&sslmode=...]"""
    parsed = urlparse(url)
    if parsed.scheme not in ("postgresql", "postgres"):
        raise TalonError(f"database url must start with postgresql://, got {parsed.scheme!r}")
    query = parse_qs(parsed.query)
    kwargs: dict[str, Any] = {
        "user": unquote(parsed.username or "postgres"),
        "password": unquote(parsed.password) if parsed.password else None,
        "database": (parsed.path or "/").lstrip("/") or "postgres",
        "timeout": timeout,
        "application_name": "talon",
    }
    address = (parsed.hostname or "127.0.0.1", parsed.port or 5432)
    # By default pg8000 offers TLS to every server, building a new SSL context for each
    # connection (~17 ms of CPU loading the system's CA certificates): pointless on a unix
    # socket or the loopback interface, so not offered there unless `sslmode` asks.
    local = "unix_sock" in query or _is_loopback(address[0])
    mode = query.get("sslmode", ["disable" if local else "prefer"])[0]
    kwargs["ssl_context"] = _ssl_context(mode)
    if "unix_sock" in query:
        kwargs["unix_sock"] = query["unix_sock"][0]
        return lambda: pg8000.dbapi.connect(**kwargs)

    def connect() -> Connection:
        try:
            sock = socket.create_connection(address, timeout)
        except OSError as exc:
            raise pg8000.dbapi.InterfaceError(f"cannot connect to {address}: {exc}") from exc
        # pg8000 leaves Nagle's algorithm on: a message over one TCP segment (a large
        # batch parameter) then waits ~40 ms for the server's delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return pg8000.dbapi.connect(sock=sock, host=address[0], **kwargs)

    return connect


SSL_MODES = ("disable", "prefer", "require", "verify-full")


def _ssl_context(mode: str) -> ssl.SSLContext | bool | None:
    """pg8000's `ssl_context` for a libpq-style `sslmode`: disable, prefer (offer TLS,
    unverified), require (TLS or no connection, unverified) or verify-full (TLS with the
    server's certificate checked against the system's CAs and the URL's host). A context is
    built once per URL, not per connection."""
    if mode not in SSL_MODES:
        raise TalonError(f"database url: sslmode must be one of {', '.join(SSL_MODES)}, "
                         f"got {mode!r}")  # fmt: skip
    if mode == "disable":
        return False
    if mode == "prefer":
        return None  # pg8000's own offer
    context = ssl.create_default_context()
    if mode == "require":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
