"""Lifecycle events (a resource hook): a changed or deleted template or MCP server goes on
the broker, so every worker drops what it built from it."""

from __future__ import annotations

from talon.broker.outbox import LIFECYCLE_TOPIC, enqueue
from talon.store.database import Tx
from talon.store.resources import Record


class LifecycleHook:
    kinds: tuple[str, ...] = ("AgentTemplate", "MCPServer")

    def written(self, tx: Tx, record: Record, *, created: bool) -> None:
        if not created:  # nothing can have been built from a resource that did not exist
            _announce(tx, record, deleted=False)

    def deleted(self, tx: Tx, record: Record) -> None:
        _announce(tx, record, deleted=True)


def _announce(tx: Tx, record: Record, *, deleted: bool) -> None:
    payload = {
        "kind": record.kind,
        "namespace": record.namespace,
        "name": record.name,
        "resourceVersion": str(record.resource_version),
        "deleted": deleted,
    }
    enqueue(tx, LIFECYCLE_TOPIC, payload, key=f"{record.kind}/{record.namespace}/{record.name}")
