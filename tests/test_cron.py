"""Cron next-fire times in a time zone, across daylight-saving changes."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from talon.scheduling.cron import fire_times, next_fire

pytestmark = pytest.mark.fast

LA = "America/Los_Angeles"


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def fires(expression: str, after: datetime, count: int, tz: str = LA) -> list[datetime]:
    return list(itertools.islice(fire_times(expression, tz, after), count))


def test_seed_schedule_weekdays_at_two_pm_in_los_angeles() -> None:
    # Friday 2026-11-27 15:00 PST -> Monday 14:00 PST (22:00 UTC); then Tuesday.
    assert fires("0 14 * * 1-5", utc(2026, 11, 27, 23, 0), 2) == [
        utc(2026, 11, 30, 22, 0), utc(2026, 12, 1, 22, 0)
    ]  # fmt: skip
    # In summer the same wall time is 21:00 UTC.
    assert next_fire("0 14 * * 1-5", LA, utc(2026, 7, 1, 0, 0)) == utc(2026, 7, 1, 21, 0)


def test_a_wall_time_skipped_by_spring_forward_fires_once_right_after_the_gap() -> None:
    # 2026-03-08: 02:00 PST jumps to 03:00 PDT (10:00 UTC); 02:30 does not exist.
    assert fires("30 2 * * *", utc(2026, 3, 7, 20, 0), 3) == [
        utc(2026, 3, 8, 10, 0),  # the first valid instant after the gap (03:00 PDT)
        utc(2026, 3, 9, 9, 30),  # 02:30 PDT
        utc(2026, 3, 10, 9, 30),
    ]


def test_several_skipped_wall_times_fire_only_once() -> None:
    assert fires("*/15 2 * * *", utc(2026, 3, 7, 20, 0), 2) == [
        utc(2026, 3, 8, 10, 0), utc(2026, 3, 9, 9, 0)
    ]  # fmt: skip


def test_a_repeated_wall_time_fires_once_at_its_first_occurrence() -> None:
    # 2026-11-01: 02:00 PDT falls back to 01:00 PST; 01:30 happens twice.
    assert fires("30 1 * * *", utc(2026, 10, 31, 20, 0), 2) == [
        utc(2026, 11, 1, 8, 30),  # 01:30 PDT
        utc(2026, 11, 2, 9, 30),  # 01:30 PST the next day
    ]
    hourly = fires("0 * * * *", utc(2026, 11, 1, 6, 30), 4)
    assert hourly == [
        utc(2026, 11, 1, 7, 0),  # 00:00 PDT
        utc(2026, 11, 1, 8, 0),  # 01:00 PDT (01:00 PST does not fire again)
        utc(2026, 11, 1, 10, 0),  # 02:00 PST
        utc(2026, 11, 1, 11, 0),
    ]


def test_starting_inside_the_repeated_hour_does_not_fire_it_again() -> None:
    # 09:10 UTC is 01:10 PST, the second pass through 01:xx: 01:30 already fired at 08:30 UTC.
    assert next_fire("30 1 * * *", LA, utc(2026, 11, 1, 9, 10)) == utc(2026, 11, 2, 9, 30)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("0 9 * JAN,JUL MON-FRI", utc(2026, 2, 1), utc(2026, 7, 1, 16, 0)),  # names, lists
        ("*/20 8-9 * * *", utc(2026, 6, 1, 15, 50), utc(2026, 6, 1, 16, 0)),  # steps, ranges
        ("0 0 1 * *", utc(2026, 6, 15), utc(2026, 7, 1, 7, 0)),  # day of month
        ("0 12 * * SUN", utc(2026, 6, 1), utc(2026, 6, 7, 19, 0)),  # weekday name
    ],
)
def test_cron_syntax(expression: str, after: datetime, expected: datetime) -> None:
    assert next_fire(expression, LA, after) == expected


def test_other_zones_and_utc() -> None:
    assert next_fire("0 9 * * *", "UTC", utc(2026, 6, 1, 9, 0)) == utc(2026, 6, 2, 9, 0)
    # Europe/Paris springs forward on 2026-03-29 at 02:00 CET -> 03:00 CEST (01:00 UTC).
    assert next_fire("30 2 * * *", "Europe/Paris", utc(2026, 3, 28, 12, 0)) == utc(
        2026, 3, 29, 1, 0
    )
