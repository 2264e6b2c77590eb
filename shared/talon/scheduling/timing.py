"""When a schedule spec fires next, from a given instant."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from talon.scheduling.cron import next_fire


def next_fire_after(spec: dict[str, Any], after: datetime) -> datetime | None:
    """None: disabled, or a `once` schedule whose time has passed."""
    if not spec.get("enabled", True):
        return None
    if spec.get("kind") == "once":
        at = datetime.fromisoformat(str(spec["at"]).replace("Z", "+00:00")).astimezone(UTC)
        return at if at > after else None
    return next_fire(spec["cron"], spec.get("timezone", "UTC"), after)
