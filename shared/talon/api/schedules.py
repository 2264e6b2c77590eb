"""Schedule actions beyond CRUD: `run` (fire now) and the recent fires."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from talon.api.params import FIRES_LIMIT
from talon.api.routing import Answer, Context, Route
from talon.resources.registry import BY_NAME
from talon.scheduling.timing import next_fire_at
from talon.store.resources import Record

NAMESPACE_PREFIXES = ("/v1/ns/<ns>", "/v1/namespaces/<ns>")
LAST_FIRES = 5  # shown on the schedule itself; `.../fires` has more


def run_schedule(ctx: Context, ns: str, name: str) -> tuple[int, dict[str, Any]]:
    result = ctx.services.schedules.fire(ns, name, datetime.now(UTC), "run")
    return 202, result


def schedule_fires(ctx: Context, ns: str, name: str) -> dict[str, Any]:
    record = ctx.services.resources.get(BY_NAME["Schedule"], ns, name)  # 404s like other routes
    return {
        "nextFireAt": next_fire_at(record.body, datetime.now(UTC)),
        "items": ctx.services.schedules.recent(ns, name, limit=ctx.param("limit")),
    }


def schedule_statuses(ctx: Context, records: list[Record]) -> list[dict[str, Any]]:
    """What a schedule's GET (and list) adds to its status: when it fires next and how its
    last fires went."""
    now = datetime.now(UTC)
    keys = [(r.namespace, r.name) for r in records]
    fires = ctx.services.schedules.recent_many(keys, limit=LAST_FIRES)
    return [
        {"nextFireAt": next_fire_at(r.body, now), "lastFires": fires[key]}
        for r, key in zip(records, keys, strict=True)
    ]


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
