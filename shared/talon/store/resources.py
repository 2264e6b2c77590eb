"""SQL for resources and the references between them."""

from __future__ import annotations

import base64
import binascii
import builtins  # a class here has a method named `list`: later annotations say builtins.list
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from talon import API_VERSION
from talon.errors import AlreadyExists, BadRequest, NotFound
from talon.resources.meta import check_label_key, check_label_value
from talon.store.database import Tx, is_unique_violation, jsonb

_COLUMNS = (
    "kind, namespace, name, uid::text AS uid, resource_version, generation, labels, "
    "annotations, body, status, created_at, updated_at"
)


@dataclass(frozen=True)
class Record:
    kind: str
    namespace: str
    name: str
    uid: str
    resource_version: int
    generation: int
    labels: dict[str, str]
    annotations: dict[str, str]
    body: dict[str, Any]
    status: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    def to_manifest(self, body_field: str) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.name}
        if self.namespace:
            metadata["namespace"] = self.namespace
        metadata.update(
            labels=self.labels,
            annotations=self.annotations,
            uid=self.uid,
            resourceVersion=str(self.resource_version),
            generation=self.generation,
            creationTimestamp=_iso(self.created_at),
            updateTimestamp=_iso(self.updated_at),
        )
        manifest = {
            "apiVersion": API_VERSION,
            "kind": self.kind,
            "metadata": metadata,
            body_field: self.body,
        }
        if self.status:
            manifest["status"] = self.status
        return manifest


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class LabelRequirement:
    key: str
    op: str  # "=", "!=", "exists", "!exists"
    value: str = ""


def parse_label_selector(text: str) -> list[LabelRequirement]:
    """`team=support,tier!=free,beta,!legacy` (a subset of the Kubernetes syntax)."""
    requirements = []
    for raw in filter(None, (part.strip() for part in text.split(","))):
        if "!=" in raw:
            key, value = raw.split("!=", 1)
            requirement = LabelRequirement(key.strip(), "!=", value.strip())
        elif "=" in raw:
            key, value = raw.split("=", 1)
            value = value[1:] if value.startswith("=") else value  # `==` is accepted too
            requirement = LabelRequirement(key.strip(), "=", value.strip())
        elif raw.startswith("!"):
            requirement = LabelRequirement(raw[1:].strip(), "!exists")
        else:
            requirement = LabelRequirement(raw, "exists")
        try:
            check_label_key(requirement.key)
            if requirement.value is not None:
                check_label_value(requirement.value)
        except ValueError as exc:
            raise BadRequest(
                f"invalid label selector {text!r}: {exc}",
                [{"path": "labelSelector", "message": str(exc)}],
            ) from exc
        requirements.append(requirement)
    return requirements


def namespace_not_found(namespace: str) -> NotFound:
    # One wording everywhere: a hidden namespace and a missing one must look the same.
    return NotFound(f"namespace {namespace!r} not found")


def require_namespace(tx: Tx, namespace: str) -> None:
    found = tx.scalar(
        "SELECT 1 FROM resources WHERE kind = 'Namespace' AND namespace = '' AND name = %s",
        (namespace,),
    )
    if found is None:
        raise namespace_not_found(namespace)


def encode_page_token(after: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).decode().rstrip("=")


def decode_page_token(token: str) -> str:
    try:
        padded = token + "=" * (-len(token) % 4)
        after = json.loads(base64.urlsafe_b64decode(padded))["after"]
        if not isinstance(after, str):
            raise TypeError
        return after
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise BadRequest(
            "invalid page token", [{"path": "pageToken", "message": "not a token from this API"}]
        ) from exc


class ResourceStore:
    """Row access for the `resources` and `resource_refs` tables inside a caller's transaction."""

    def get(
        self, tx: Tx, kind: str, namespace: str, name: str, *, lock: str | None = None
    ) -> Record | None:
        suffix = {None: "", "share": " FOR SHARE", "update": " FOR UPDATE"}[lock]
        row = tx.one(
            f"SELECT {_COLUMNS} FROM resources WHERE kind=%s AND namespace=%s AND name=%s{suffix}",
            (kind, namespace, name),
        )
        return Record(**row) if row else None

    def list(
        self,
        tx: Tx,
        kind: str,
        namespace: str | None,
        *,
        after: str | None = None,
        limit: int = 100,
        selector: builtins.list[LabelRequirement] | None = None,
        visible_namespaces: builtins.list[str] | None = None,
    ) -> builtins.list[Record]:
        where = ["kind=%s"]
        params: list[Any] = [kind]
        if namespace is not None:
            where.append("namespace=%s")
            params.append(namespace)
        if visible_namespaces is not None:
            column = "name" if kind == "Namespace" else "namespace"
            where.append(f"{column} = ANY(%s::text[])")
            params.append(visible_namespaces)
        if after is not None:
            where.append("name > %s")
            params.append(after)
        for req in selector or []:
            if req.op == "=":
                where.append("labels @> %s::jsonb")
                params.append(jsonb({req.key: req.value}))
            elif req.op == "!=":
                where.append("NOT labels @> %s::jsonb")
                params.append(jsonb({req.key: req.value}))
            elif req.op == "exists":
                where.append("jsonb_exists(labels, %s)")
                params.append(req.key)
            else:
                where.append("NOT jsonb_exists(labels, %s)")
                params.append(req.key)
        params.append(limit)
        rows = tx.all(
            f"SELECT {_COLUMNS} FROM resources WHERE {' AND '.join(where)} ORDER BY name LIMIT %s",
            params,
        )
        return [Record(**row) for row in rows]

    def insert(
        self,
        tx: Tx,
        kind: str,
        namespace: str,
        name: str,
        *,
        labels: dict[str, str],
        annotations: dict[str, str],
        body: dict[str, Any],
        status: dict[str, Any],
    ) -> Record:
        try:
            row = tx.one(
                "INSERT INTO resources (kind, namespace, name, uid, resource_version, labels, "
                "annotations, body, status) VALUES (%s, %s, %s, %s, "
                "nextval('resource_version_seq'), %s::jsonb, %s::jsonb, %s::jsonb, %s::jsonb) "
                f"RETURNING {_COLUMNS}",
                (
                    kind,
                    namespace,
                    name,
                    str(uuid.uuid4()),
                    jsonb(labels),
                    jsonb(annotations),
                    jsonb(body),
                    jsonb(status),
                ),
            )
        except Exception as exc:
            if is_unique_violation(exc):
                raise AlreadyExists(f"{kind} {name!r} already exists") from exc
            raise
        assert row is not None
        return Record(**row)

    def update(
        self,
        tx: Tx,
        current: Record,
        *,
        labels: dict[str, str],
        annotations: dict[str, str],
        body: dict[str, Any],
        status: dict[str, Any],
    ) -> Record:
        generation = current.generation + (1 if body != current.body else 0)
        row = tx.one(
            "UPDATE resources SET resource_version = nextval('resource_version_seq'), "
            "generation=%s, labels=%s::jsonb, annotations=%s::jsonb, body=%s::jsonb, "
            "status=%s::jsonb, updated_at=now() "
            f"WHERE kind=%s AND namespace=%s AND name=%s RETURNING {_COLUMNS}",
            (
                generation,
                jsonb(labels),
                jsonb(annotations),
                jsonb(body),
                jsonb(status),
                current.kind,
                current.namespace,
                current.name,
            ),
        )
        assert row is not None
        return Record(**row)

    def delete(self, tx: Tx, record: Record) -> None:
        tx.execute(
            "DELETE FROM resources WHERE kind=%s AND namespace=%s AND name=%s",
            (record.kind, record.namespace, record.name),
        )
        tx.execute(
            "DELETE FROM resource_refs WHERE namespace=%s AND kind=%s AND name=%s",
            (record.namespace, record.kind, record.name),
        )

    def set_refs(
        self, tx: Tx, kind: str, namespace: str, name: str, refs: set[tuple[str, str]]
    ) -> None:
        tx.execute(
            "DELETE FROM resource_refs WHERE namespace=%s AND kind=%s AND name=%s",
            (namespace, kind, name),
        )
        for ref_kind, ref_name in sorted(refs):
            tx.execute(
                "INSERT INTO resource_refs (namespace, kind, name, ref_kind, ref_name) "
                "VALUES (%s, %s, %s, %s, %s)",
                (namespace, kind, name, ref_kind, ref_name),
            )

    def dependents(
        self, tx: Tx, kind: str, namespace: str, name: str
    ) -> builtins.list[tuple[str, str]]:
        rows = tx.all(
            "SELECT kind, name FROM resource_refs WHERE namespace=%s AND ref_kind=%s "
            "AND ref_name=%s ORDER BY kind, name",
            (namespace, kind, name),
        )
        return [(r["kind"], r["name"]) for r in rows]

    def namespace_contents(
        self, tx: Tx, namespace: str, limit: int = 20
    ) -> builtins.list[tuple[str, str]]:
        rows = tx.all(
            "SELECT kind, name FROM resources WHERE namespace=%s ORDER BY kind, name LIMIT %s",
            (namespace, limit),
        )
        return [(r["kind"], r["name"]) for r in rows]
