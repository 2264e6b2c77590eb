"""The gateway's limits on a request, read once from the settings (no database needed, so
they hold while the gateway itself cannot be built)."""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping
from dataclasses import dataclass

from talon.actions.stream_slots import hub_stream_caps, stream_caps
from talon.config import GatewaySettings


def server_threads(environ: Mapping[str, str] = os.environ) -> int:
    """The threads serving requests in this process: THREADS, else functions-framework's
    default (4 per core), which is what its gunicorn and `talon.serve` run with."""
    try:
        threads = int(environ.get("THREADS", ""))
    except ValueError:
        threads = (os.cpu_count() or 1) * 4
    return max(1, threads)


def open_files_limit() -> int:
    """The process's soft limit on open files (talon.serve raises it to the hard one)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


@dataclass(frozen=True)
class RequestLimits:
    max_body_bytes: int
    body_seconds: float
    max_unauthenticated: int
    max_open_streams: int = 1
    max_streams_per_token: int = 1
    # Where streams hold no thread (talon.serve's stream hub).
    max_hub_streams: int = 1
    max_hub_streams_per_token: int = 1

    @classmethod
    def from_settings(
        cls, gateway: GatewaySettings, environ: Mapping[str, str] = os.environ
    ) -> RequestLimits:
        threads = server_threads(environ)
        unauthenticated = max(1, gateway.max_unauthenticated_requests or threads // 2)
        # Streams hold their thread for minutes: they may take some of the threads requests
        # with a token can count on, never all of them.
        streams, per_token = stream_caps(
            threads - unauthenticated, gateway.max_open_streams, gateway.max_streams_per_token
        )
        hub_streams, hub_per_token = hub_stream_caps(
            gateway.max_open_streams, gateway.max_streams_per_token, open_files_limit()
        )
        return cls(
            max_body_bytes=gateway.max_body_bytes,
            body_seconds=gateway.body_timeout_seconds,
            max_unauthenticated=unauthenticated,
            max_open_streams=streams,
            max_streams_per_token=per_token,
            max_hub_streams=hub_streams,
            max_hub_streams_per_token=hub_per_token,
        )
