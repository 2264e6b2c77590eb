"""What the worker needs from a broker: deliveries to handle and a way to settle them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from talon.store.database import Tx


@dataclass(frozen=True)
class Condition:
    """A boolean SQL expression and its parameters, for another module's statement to
    evaluate (`Delivery.ack_in`, `DeliveryClaim.took`)."""

    sql: str
    params: tuple[Any, ...]


@dataclass(frozen=True)
class DeliveryClaim:
    """A delivery's claim queued in a handler's transaction (`Delivery.claim_in`)."""

    # True in the transaction's later statements iff the claim took the delivery: a
    # statement sent in the same round trip can make its writes depend on it, so that a
    # delivery another consumer took costs nothing to undo.
    took: Condition
    # The same in Python, once the statement the claim travelled with has run.
    taken: Callable[[], bool]


@dataclass(frozen=True)
class Delivery:
    id: str
    topic: str
    payload: dict[str, Any]
    attempt: int  # 1 on first delivery
    # The broker gave up on this event after its deliveries ran out (a dead letter): the
    # handler settles what the event was for (fails the turn it names) instead of doing it.
    dead_lettered: bool = False
    # Drivers whose queue lives in our database offer to acknowledge inside the handler's own
    # last transaction, so the work and its acknowledgement commit together (one commit less
    # per delivery); the handler then returns `Result.settled()`. `ack_in(tx, when)`: only
    # if the SQL condition `when` holds as its statement runs (decided by the database, so
    # the handler need not wait for an answer first); it returns what says, once the
    # transaction has committed, whether it acknowledged.
    ack_in: Callable[[Tx, Condition | None], Callable[[], bool]] | None = field(
        default=None, compare=False, repr=False
    )
    # A delivery handed out before it was claimed (the postgres broker's notified rows): the
    # handler claims it inside its own first transaction, one commit less per delivery.
    # `claim_in(tx)` queues the claim to travel with the transaction's next statement
    # (`Tx.later`) and says whether it took the delivery (`DeliveryClaim`). If not, another
    # consumer has it: the handler's writes in that transaction must not happen (they
    # depend on `took`, or are undone) and it does nothing more with the delivery (nor
    # settles it).
    claim_in: Callable[[Tx], DeliveryClaim] | None = field(default=None, compare=False, repr=False)


class Outcome:
    """How a handler settles a delivery."""

    ACK = "ack"  # done (or nothing to do): never deliver again
    RETRY = "retry"  # deliver again, at `retry_at` or after the driver's backoff
    SETTLED = "settled"  # acknowledged with `Delivery.ack_in` in the handler's transaction


@dataclass(frozen=True)
class Result:
    outcome: str
    retry_at: datetime | None = None
    # A retry that waits on another worker's turn: the broker may deliver it again as soon
    # as that worker (its liveness owner id) dies, before `retry_at`.
    holder: str | None = None

    @classmethod
    def ack(cls) -> Result:
        return cls(Outcome.ACK)

    @classmethod
    def settled(cls) -> Result:
        return cls(Outcome.SETTLED)

    @classmethod
    def retry(cls, at: datetime | None = None, *, holder: str | None = None) -> Result:
        return cls(Outcome.RETRY, at, holder)


class Handler(Protocol):
    def __call__(self, delivery: Delivery) -> Result: ...


class Consumer(Protocol):
    """A broker the worker pulls from: hands deliveries to `handler`, at most `concurrency`
    at a time, until `stop` is set; returns once the handlers in progress are done."""

    def consume(self, handler: Handler, stop: threading.Event, *, concurrency: int) -> None: ...
