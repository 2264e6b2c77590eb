"""Exponential backoff with full jitter: the one formula every retry loop in Talon uses.

The delay before retry `attempt` (1 for the first retry) is uniform in [0, bound], where the
bound starts at `initial` and doubles per attempt up to `maximum`. Jitter over the whole range
spreads out callers that failed together (a database restart, a provider outage), so they do
not all come back in the same instant.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_bound(attempt: int, *, initial: float, maximum: float) -> float:
    """The largest delay before retry `attempt`."""
    exponent = min(max(attempt, 1) - 1, 62)  # 2**62 already dwarfs any maximum
    return min(maximum, initial * 2.0**exponent)


def backoff_delay(
    attempt: int,
    *,
    initial: float,
    maximum: float,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float:
    """A delay before retry `attempt`, uniform in [0, bound]."""
    return uniform(0.0, backoff_bound(attempt, initial=initial, maximum=maximum))
