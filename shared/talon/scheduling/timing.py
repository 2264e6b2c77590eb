"""When a schedule spec fires next, and which slot a late scheduler should fire."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from talon.scheduling.cron import fire_times, next_fire, to_instant

SKIP_GRACE = timedelta(seconds=60)  # with `skip`, a fire this late still counts as on time
_MAX_MISSED = 1000  # slots examined when catching up; more were missed than anyone needs


def once_instant(at: str | datetime, timezone: str) -> datetime:
    """A `once` schedule's `at` on the UTC timeline. A wall time without a UTC offset is read
    in the schedule's time zone (not the host's), like cron: a time skipped by a DST change
    means the first valid instant after it, a repeated one its first occurrence. Kept naive
    in the manifest, so changing `timezone` later moves the fire with it. OverflowError: the
    instant is not representable in UTC (`9999-12-31T23:59:59-14:00`)."""
    if isinstance(at, str):
        at = datetime.fromisoformat(at.replace("Z", "+00:00"))
    if at.tzinfo is None:
        return to_instant(at, ZoneInfo(timezone))
    return at.astimezone(UTC)


def next_fire_after(spec: dict[str, Any], after: datetime) -> datetime | None:
    """None: disabled, or a `once` schedule whose time has passed."""
    if not spec.get("enabled", True):
        return None
    if spec.get("kind") == "once":
        at = once_instant(str(spec["at"]), spec.get("timezone", "UTC"))
        return at if at > after else None
    return next_fire(spec["cron"], spec.get("timezone", "UTC"), after)


def next_fire_at(spec: dict[str, Any], now: datetime) -> str | None:
    """When the schedule fires next, as the API and talon-ops show it (UTC, `Z`); None:
    disabled, or a `once` already past."""
    at = next_fire_after(spec, now)
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z") if at is not None else None


def slot_to_fire(
    spec: dict[str, Any], due_at: datetime, now: datetime
) -> tuple[datetime | None, str]:
    """The slot to fire for a schedule that was due at `due_at`, seen at `now`, and why.

    On time: `due_at` itself. After downtime that spanned several fire times, the
    missed-fire policy decides: `fireOnce` (default) fires the latest missed slot once,
    `skip` fires nothing unless the latest slot is within SKIP_GRACE. None: fire nothing.
    """
    skip = spec.get("missedFirePolicy", "fireOnce") == "skip"
    if spec.get("kind") == "once":
        return (None if skip and now - due_at > SKIP_GRACE else due_at), "once"
    zone = spec.get("timezone", "UTC")
    if next_fire(spec["cron"], zone, due_at) > now:  # on time (the common, cached case)
        missed = [due_at]
    else:
        missed = [due_at, *_slots_between(spec, due_at, now)]
    if len(missed) == 1:
        return (None if skip and now - due_at > SKIP_GRACE else due_at), "cron"
    latest = missed[-1]
    if skip:
        return (latest if now - latest <= SKIP_GRACE else None), "cron"
    return latest, "catch-up"


def _slots_between(spec: dict[str, Any], after: datetime, until: datetime) -> list[datetime]:
    slots: list[datetime] = []
    for instant in fire_times(spec["cron"], spec.get("timezone", "UTC"), after):
        if instant > until or len(slots) > _MAX_MISSED:
            break
        slots.append(instant)
    return slots
