"""The gRPC server: every talon.v1 service, the standard health service and server
reflection (so grpcurl, grpcui and Postman need no .proto files), plaintext HTTP/2 (h2c; Cloud
Run terminates TLS in front of it)."""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from talon.actions.stream_slots import StreamSlots, stream_caps
from talon.grpc.calls import Calls
from talon.grpc.gen import sessions_pb2_grpc
from talon.grpc.resources import add_resource_services
from talon.grpc.sessions import SessionsServicer
from talon.grpc.tracing import TracingInterceptor
from talon.services import Services

# Each open StreamEvents call holds a thread, as an SSE stream does in the gateway: they may
# take at most gateway.maxOpenStreams of them (by default three quarters, see stream_slots).
DEFAULT_THREADS = 64


class PortTaken(Exception):
    """The address could not be bound."""


def build_server(
    services: Services, address: str, *, threads: int = DEFAULT_THREADS
) -> tuple[grpc.Server, int]:
    """A server with every service, bound to `address` (host:port; port 0: a free one) but
    not started; returns it and the port bound."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="talon-grpc"),
        # A call beyond the threads is refused at once (RESOURCE_EXHAUSTED, which clients
        # retry) rather than queued behind streams that may stay open for minutes; Cloud Run
        # sends an instance at most this many (terraform: the service's concurrency).
        maximum_concurrent_rpcs=threads,
        interceptors=[TracingInterceptor()],
        options=[
            # Another process on the port is an error, not a silent share of its traffic.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", services.settings.gateway.max_body_bytes),
        ],
    )
    calls = Calls(services)
    names = add_resource_services(server, calls)
    gateway = services.settings.gateway
    caps = stream_caps(threads, gateway.max_open_streams, gateway.max_streams_per_token)
    sessions = SessionsServicer(calls, StreamSlots(*caps))
    sessions_pb2_grpc.add_SessionsServicer_to_server(sessions, server)
    names.append("talon.v1.Sessions")
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise PortTaken(f"cannot listen on {address}: {exc}") from exc
    if port == 0:
        raise PortTaken(f"cannot listen on {address}")
    return server, port
