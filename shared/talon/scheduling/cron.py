"""Next-fire computation for cron schedules in an IANA time zone, correct across DST.

Cron describes wall-clock times, so the expression is evaluated on naive local times by
croniter and each wall time is then placed on the timeline:
- a wall time that does not exist (spring forward) fires once, at the first valid instant
  after the gap (so `*/15 2 * * *` fires once, at 03:00, on that day);
- a wall time that happens twice (fall back) fires once, at its first occurrence.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

_MAX_STEPS = 10_000  # wall times examined per call; far more than any real expression needs


def to_instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """Place a naive wall-clock time of `zone` on the UTC timeline (see module doc)."""
    first = wall.replace(tzinfo=zone, fold=0)
    if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall:
        return first.astimezone(UTC)  # exists (for a repeated time: its first occurrence)
    # In a gap: the transition lies between the two readings of the wall time.
    low = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    high = first.astimezone(UTC)
    if low > high:
        low, high = high, low
    offset_after = high.astimezone(zone).utcoffset()
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == offset_after:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)


def fire_times(expression: str, timezone: str, after: datetime) -> Iterator[datetime]:
    """Fire instants (UTC) strictly after `after`, in order, each at most once."""
    zone = ZoneInfo(timezone)
    # Wall times before `after`'s own have all occurred (or fall in a gap that is over), so
    # starting there misses nothing; earlier candidates are dropped by the check below.
    local = after.astimezone(zone).replace(tzinfo=None)
    iterator = croniter(expression, local)
    last: datetime | None = None
    for _ in range(_MAX_STEPS):
        instant = to_instant(iterator.get_next(datetime), zone)
        if instant <= after or (last is not None and instant <= last):
            continue
        last = instant
        yield instant
    raise ValueError(f"{expression!r} produced no fire time within {_MAX_STEPS} steps")


@functools.lru_cache(maxsize=4096)
def next_fire(expression: str, timezone: str, after: datetime) -> datetime:
    # Cached: a scheduler tick asks for the same (expression, zone, now) for every schedule
    # sharing an expression.
    return next(fire_times(expression, timezone, after))
