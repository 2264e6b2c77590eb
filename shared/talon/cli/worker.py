"""`talon worker`: the pull-mode worker (worker.pullMode) as a long-running process."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

from talon.logs import configure_logging
from talon.telemetry.setup import configure_telemetry, flush_telemetry, metrics_exported


def run_worker(
    *,
    concurrency: int,
    demo_fallback: bool,
    lease_seconds: float,
    visibility_seconds: float,
    max_attempts: int = 5,
) -> int:
    from talon.cli.client import CliError
    from talon.config import load_settings
    from talon.services import Services

    configure_logging()
    configure_telemetry()
    settings = load_settings()
    broker = settings.control_plane.message_broker
    if not settings.worker.pull_mode or broker.driver != "postgres":
        raise CliError(
            "`talon worker` pulls from the postgres broker (worker.pullMode: true, "
            "message_broker.driver: postgres); with gcp_pubsub, turns are pushed to the "
            "dispatch function instead"
        )
    services = Services.start(settings)
    if metrics_exported():
        services.report_gauges()
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        worker = services.worker(
            skills_dir=Path(services.settings.worker.skills_dir),
            demo_fallback=demo_fallback,
            lease_seconds=lease_seconds,
            max_attempts=max_attempts,
            takeover_poll_seconds=settings.worker.takeover_poll_seconds,
        )
        try:
            worker.run_pull(
                stop,
                concurrency=concurrency,
                visibility_seconds=visibility_seconds,
                schedules=settings.control_plane.scheduler.backend == "postgres",
            )
        finally:
            worker.close()
    finally:
        services.close()
        flush_telemetry()
    return 0
