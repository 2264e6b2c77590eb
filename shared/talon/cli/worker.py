"""`talon worker`: the pull-mode worker (worker.pullMode) as a long-running process, on the
PostgreSQL queue or on Pub/Sub subscriptions (streaming pull), per message_broker.driver."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType

from talon.logs import configure_logging
from talon.telemetry.setup import configure_telemetry, flush_telemetry, metrics_exported

log = logging.getLogger(__name__)
SWEEP_EVERY_SECONDS = 10.0


def run_worker(
    *,
    concurrency: int,
    demo_fallback: bool,
    lease_seconds: float,
    visibility_seconds: float,
    max_attempts: int = 5,
) -> int:
    from talon.cli.client import CliError
    from talon.config import for_worker, load_settings
    from talon.services import Services

    configure_logging()
    configure_telemetry()
    settings = for_worker(load_settings())
    broker = settings.control_plane.message_broker
    if not settings.worker.pull_mode:
        raise CliError(
            "`talon worker` pulls (worker.pullMode: true); with pullMode false, turns are "
            "pushed to the dispatch function instead"
        )
    consumer = None
    if broker.driver == "gcp_pubsub":
        from talon.broker.pubsub_pull import PubSubConsumer  # Google import only when configured

        consumer = PubSubConsumer(broker)
    services = Services.start(settings)
    if metrics_exported():
        services.report_gauges()
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    health = _health_server(os.environ.get("PORT"))
    try:
        worker = services.worker(
            skills_dir=Path(services.settings.worker.skills_dir),
            demo_fallback=demo_fallback,
            lease_seconds=lease_seconds,
            max_attempts=max_attempts,
            takeover_poll_seconds=settings.worker.takeover_poll_seconds,
        )
        if services.relay is not None:  # publish outbox rows a crashed process left behind
            relay = services.relay
            threading.Thread(target=_sweep, args=(relay.flush, stop), name="talon-sweep",
                             daemon=True).start()  # fmt: skip
        try:
            worker.run_pull(
                stop,
                concurrency=concurrency,
                visibility_seconds=visibility_seconds,
                schedules=settings.control_plane.scheduler.backend == "postgres",
                max_delivery_attempts=broker.max_delivery_attempts,
                consumer=consumer,
            )
        finally:
            worker.close()
    finally:
        if health is not None:
            health.shutdown()
        services.close()
        flush_telemetry()
    return 0


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/healthz" else 404
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return  # probes every few seconds: not worth a log line each


def _health_server(port: str | None) -> ThreadingHTTPServer | None:
    """On Cloud Run (a service with CPU always allocated, see terraform/modules/worker) the
    platform probes $PORT: answer /healthz while the worker runs (it exits if its consumer
    fails for good, and is restarted)."""
    if not port:
        return None
    server = ThreadingHTTPServer(("0.0.0.0", int(port)), _Health)
    threading.Thread(target=server.serve_forever, name="talon-health", daemon=True).start()
    return server


def _sweep(flush: Callable[..., int], stop: threading.Event) -> None:
    """What the dispatch function's sweep does in push mode: outbox rows committed but never
    published (their process died between commit and publish) go out after a while."""
    while not stop.wait(SWEEP_EVERY_SECONDS):
        try:
            flush(older_than_seconds=SWEEP_EVERY_SECONDS)
        except Exception as exc:
            log.warning("outbox sweep failed: %s", exc)
