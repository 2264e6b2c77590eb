"""The port through which other parts of Talon react to resource writes, in the writing
transaction: the wiring (`talon.services`) registers one hook per concern, so the resource
service knows nothing of schedules, knowledge indexes or the broker."""

from __future__ import annotations

from typing import Protocol

from talon.store.database import Tx
from talon.store.resources import Record


class ResourceHook(Protocol):
    kinds: tuple[str, ...]  # the kinds it reacts to

    def written(self, tx: Tx, record: Record, *, created: bool) -> None:
        """`record` was created or changed (not called when an apply left it unchanged)."""

    def deleted(self, tx: Tx, record: Record) -> None:
        """`record` was deleted."""
