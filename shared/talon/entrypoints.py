"""Process-wide singletons for the Cloud Run function shims in `functions/*/main.py`.

Built on first use, not at import, so a cold start that fails (database down) is retried on
the next request instead of leaving a broken process.
"""

from __future__ import annotations

import atexit
import threading
from pathlib import Path
from typing import Any

from talon.logs import configure_logging
from talon.services import Services
from talon.telemetry.setup import configure_telemetry, metrics_exported

# Reentrant: building the gateway builds the services first, under the same lock.
_lock = threading.RLock()
_instances: dict[str, Any] = {}
_exit_hook = threading.Event()  # set once reset() is registered to run at the process's exit


def _once(name: str, build: Any) -> Any:
    instance = _instances.get(name)
    if instance is None:
        with _lock:
            instance = _instances.get(name)
            if instance is None:
                configure_logging()
                configure_telemetry()
                instance = build()
                _instances[name] = instance
    return instance


def services() -> Services:
    def build() -> Services:
        started = Services.start()
        if metrics_exported():
            started.report_gauges()
        # A stopped instance's process exits (gunicorn's worker and talon.serve both exit on
        # SIGTERM, and run atexit hooks): closing lets the relay's background publishes be
        # answered and deletes their outbox rows, which the sweep would publish again.
        _close_at_exit()
        return started

    return _once("services", build)


def gateway() -> Any:
    from talon.api.app import Gateway

    return _once("gateway", lambda: Gateway(services()))


def request_limits() -> Any:
    """The gateway's request limits, from the settings alone: they hold while the database
    is down. Invalid settings give the defaults here (not kept); building the gateway then
    fails and says why."""
    from talon.api.limits import RequestLimits
    from talon.config import GatewaySettings, load_settings
    from talon.errors import ConfigError

    try:
        return _once("limits", lambda: RequestLimits.from_settings(load_settings().gateway))
    except ConfigError:
        return RequestLimits.from_settings(GatewaySettings())


def front_door() -> Any:
    """What the gateway function serves: the Gateway behind its admission and body rules."""
    from talon.api.front_door import FrontDoor

    return _once("front_door", lambda: FrontDoor(gateway, request_limits()))


def dispatch() -> Any:
    from talon.api.push import DispatchEndpoint

    def build() -> DispatchEndpoint:
        built = services()
        skills = Path(built.settings.worker.skills_dir)
        return DispatchEndpoint(built, built.worker(skills_dir=skills))

    return _once("dispatch", build)


def scheduler() -> Any:
    from talon.api.scheduler_callback import SchedulerEndpoint

    def build() -> SchedulerEndpoint:
        built = services()
        if built.tasks is None:
            raise RuntimeError(
                "the scheduler function needs control_plane.scheduler.backend = cloud_tasks"
            )
        return SchedulerEndpoint(built.settings.control_plane.scheduler, built.tasks)

    return _once("scheduler", build)


def ops_mcp() -> Any:
    from talon.ops.mcp_app import OpsApp

    return _once("ops_mcp", lambda: OpsApp(services()))


def _close_at_exit() -> None:
    if not _exit_hook.is_set():
        _exit_hook.set()
        atexit.register(reset)


def reset() -> None:
    """Drop the singletons (closing their pools) so the next request rebuilds them from the
    environment. Used by tests that point the same function at a fresh database."""
    with _lock:
        built = _instances.get("services")
        _instances.clear()
    if built is not None:
        built.close()
