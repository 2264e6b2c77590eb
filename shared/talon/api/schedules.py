"""Schedule actions beyond CRUD: `run` (fire now) and the recent fires."""

from __future__ import annotations

from typing import Any

from talon.actions import resources as actions
from talon.api.params import FIRES_LIMIT
from talon.api.routing import Answer, Context, Route

NAMESPACE_PREFIXES = ("/v1/ns/<ns>", "/v1/namespaces/<ns>")


def run_schedule(ctx: Context, ns: str, name: str) -> tuple[int, dict[str, Any]]:
    return 202, actions.run_schedule(ctx.services, ns, name)


def schedule_fires(ctx: Context, ns: str, name: str) -> dict[str, Any]:
    return actions.schedule_fires(ctx.services, ns, name, limit=ctx.param("limit"))


def schedule_routes() -> list[Route]:
    routes = []
    for prefix in NAMESPACE_PREFIXES:
        item = f"{prefix}/schedules/<name>"
        routes += [
            Route("POST", f"{item}/run", run_schedule,
                  "Fire the schedule now: its input message goes to its target session.",
                  role="write", tags=("schedules",), answers=(Answer(202, "FireResult"),)),
            Route("GET", f"{item}/fires", schedule_fires,
                  "The schedule's most recent fires and their outcome.", tags=("schedules",),
                  query=(FIRES_LIMIT,), answers=(Answer(200, "Fires"),)),
        ]  # fmt: skip
    return routes
