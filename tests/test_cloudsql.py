"""The Cloud SQL adapter's connections, as far as they run here: the arguments Talon gives the
connector go through the connector's own pg8000 helper, with a TLS socket to a stand-in for
the instance's server-side proxy (TLS in front of the test PostgreSQL, which declines an
SSLRequest inside the tunnel with 'N', as a server without TLS of its own does). The part
before it (the SQL Admin API, the ephemeral certificate) needs Google and is not run."""

from __future__ import annotations

import selectors
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.cloud.sql.connector import pg8000 as connector_pg8000

from talon.config import DatabaseSettings
from talon.store.cloudsql import driver_arguments

_SSL_REQUEST = struct.pack("!ii", 8, 80877103)
_LOOPBACK = x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))])


def _certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "talon-test-instance")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(_LOOPBACK, critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class _ServerSideProxy:
    """TLS in, PostgreSQL's protocol out to `upstream`; counts the SSLRequests it declines."""

    def __init__(self, directory: Path, upstream: tuple[str, int]) -> None:
        self.certificate, key = _certificate(directory)
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(self.certificate, key)
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.ssl_requests = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        with (
            self._context.wrap_socket(raw, server_side=True) as client,
            socket.create_connection(self._upstream) as server,
        ):
            first = _read_exactly(client, 8)
            if first == _SSL_REQUEST:
                self.ssl_requests += 1
                client.sendall(b"N")
                first = b""
            if client.pending():  # the rest of the record the first bytes came in
                first += client.recv(client.pending())
            server.sendall(first)
            _pump(client, server)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _pump(client: ssl.SSLSocket, server: socket.socket) -> None:
    """Both directions on one thread (an SSL socket is not shared between threads)."""
    with selectors.DefaultSelector() as selector:
        selector.register(client, selectors.EVENT_READ, server)
        selector.register(server, selectors.EVENT_READ, client)
        while True:
            for key, _ in selector.select():
                source: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data = source.recv(65536)
                    while isinstance(source, ssl.SSLSocket) and source.pending():
                        data += source.recv(source.pending())
                except OSError:
                    return
                if not data:
                    return
                key.data.sendall(data)


@pytest.fixture
def proxy(tmp_path: Path, database_url: str) -> Iterator[_ServerSideProxy]:
    url = urlsplit(database_url)
    stand_in = _ServerSideProxy(tmp_path, (url.hostname or "127.0.0.1", url.port or 5432))
    yield stand_in
    stand_in.close()


def _settings(database_url: str) -> DatabaseSettings:
    url = urlsplit(database_url)
    return DatabaseSettings(
        instance_connection_name="project:region:instance",
        user=unquote(url.username or ""),
        password=unquote(url.password or ""),
        name=url.path.lstrip("/"),
    )


def _tls_socket(proxy: _ServerSideProxy) -> ssl.SSLSocket:
    # As the connector does: TLS to the instance, verified against its server CA.
    context = ssl.create_default_context(cafile=str(proxy.certificate))
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def test_a_cloud_sql_connection_asks_for_no_tls_inside_the_tunnel(
    proxy: _ServerSideProxy, database_url: str
) -> None:
    """pg8000 given the connector's TLS socket would otherwise build an SSL context for each
    connection (~17 ms of CPU) and spend a round trip on an SSLRequest the proxy declines."""
    arguments = driver_arguments(_settings(database_url))
    connection = connector_pg8000.connect("127.0.0.1", _tls_socket(proxy), **arguments)
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT current_database(), count(*) FROM schema_migrations")
        database, migrations = cursor.fetchone()
        assert database == _settings(database_url).name and migrations > 0
    finally:
        connection.close()
    assert proxy.ssl_requests == 0
    # The stand-in declines TLS as the instance's proxy does: pg8000's default asks, and
    # goes on in the tunnel once declined.
    default = {k: v for k, v in arguments.items() if k != "ssl_context"}
    connection = connector_pg8000.connect("127.0.0.1", _tls_socket(proxy), **default)
    connection.close()
    assert proxy.ssl_requests == 1
