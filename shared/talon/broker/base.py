"""What the worker needs from a broker: deliveries to handle and a way to settle them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class Delivery:
    id: str
    topic: str
    payload: dict[str, Any]
    attempt: int  # 1 on first delivery


class Outcome:
    """How a handler settles a delivery."""

    ACK = "ack"  # done (or nothing to do): never deliver again
    RETRY = "retry"  # deliver again, at `retry_at` or after the driver's backoff


@dataclass(frozen=True)
class Result:
    outcome: str
    retry_at: datetime | None = None

    @classmethod
    def ack(cls) -> Result:
        return cls(Outcome.ACK)

    @classmethod
    def retry(cls, at: datetime | None = None) -> Result:
        return cls(Outcome.RETRY, at)


class Handler(Protocol):
    def __call__(self, delivery: Delivery) -> Result: ...
