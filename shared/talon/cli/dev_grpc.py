"""The gRPC server in `talon dev`: where it listens and the command that runs it (the same
`python -m talon.grpc` the Cloud Run service runs)."""

from __future__ import annotations

import socket
import sys

from talon.cli.client import CliError
from talon.config import Settings

DEFAULT_GRPC_PORT = 50051


def grpc_address(settings: Settings, host: str | None, port: int | None) -> tuple[str, int]:
    """--host and --grpc-port win; otherwise gateway.grpcAddr (default 0.0.0.0:50051)."""
    configured_host, _, configured_port = settings.gateway.grpc_addr.rpartition(":")
    if port is None:
        try:
            port = int(configured_port) if configured_port else DEFAULT_GRPC_PORT
        except ValueError as exc:
            raise CliError(
                f"gateway.grpcAddr must be HOST:PORT, not {settings.gateway.grpc_addr!r}"
            ) from exc
    return host or configured_host or "127.0.0.1", port


def ensure_grpc_port_free(host: str, port: int) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise CliError(
                f"the gRPC port {host}:{port} is in use ({exc.strerror}); pass --grpc-port"
            ) from exc


def grpc_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "talon.grpc", "--address", f"{host}:{port}"]


def local_host(host: str) -> str:
    """Where to reach a server listening on `host` from this machine."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
