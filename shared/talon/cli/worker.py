"""`talon worker`: the pull-mode worker (worker.pullMode) as a long-running process."""

from __future__ import annotations

import signal
import threading
from types import FrameType

from talon.logs import configure_logging


def run_worker(
    *, concurrency: int, demo_fallback: bool, lease_seconds: float, visibility_seconds: float
) -> int:
    from talon.runtime.worker import Worker
    from talon.services import Services

    configure_logging()
    services = Services.start()
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        worker = Worker(services.db, demo_fallback=demo_fallback, lease_seconds=lease_seconds)
        worker.run_pull(stop, concurrency=concurrency, visibility_seconds=visibility_seconds)
    finally:
        services.close()
    return 0
