"""Keeps the knowledge index in step with Knowledge documents (a resource hook): a document
is searchable as soon as its write commits."""

from __future__ import annotations

from talon.knowledge.index import index_document, remove_document
from talon.store.database import Tx
from talon.store.resources import Record


class KnowledgeIndexHook:
    kinds: tuple[str, ...] = ("Knowledge",)

    def written(self, tx: Tx, record: Record, *, created: bool) -> None:
        index_document(tx, record.namespace, record.name, record.resource_version, record.body)

    def deleted(self, tx: Tx, record: Record) -> None:
        remove_document(tx, record.namespace, record.name)
