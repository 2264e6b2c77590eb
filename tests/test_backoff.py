"""The one backoff formula: exponential bounds, capped, with full jitter."""

from __future__ import annotations

import random

import pytest

from talon.backoff import backoff_bound, backoff_delay

pytestmark = pytest.mark.fast


def test_the_bound_doubles_per_attempt_up_to_the_maximum() -> None:
    bounds = [backoff_bound(a, initial=0.5, maximum=8.0) for a in range(1, 8)]
    assert bounds == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff_bound(0, initial=0.5, maximum=8.0) == 0.5  # the first retry, however counted
    assert backoff_bound(10_000, initial=0.5, maximum=30.0) == 30.0  # no overflow


def test_the_delay_is_uniform_over_the_whole_range() -> None:
    asked: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        asked.append((low, high))
        return high

    assert backoff_delay(3, initial=1.0, maximum=60.0, uniform=uniform) == 4.0
    assert asked == [(0.0, 4.0)]
    rng = random.Random(7)
    delays = [backoff_delay(4, initial=1.0, maximum=60.0, uniform=rng.uniform)
              for _ in range(2000)]  # fmt: skip
    assert all(0.0 <= d <= 8.0 for d in delays)
    assert min(delays) < 1.0 and max(delays) > 7.0  # spread over the range, not clustered
