"""The resource lifecycle: create, replace, patch, delete, apply, with references enforced.

Transport-agnostic: callers (HTTP API, CLI, tests) pass validated resources and receive
records or `TalonError`s. Every write is one transaction, including the re-resolution of
agents that depend on a changed template or MCP server.
"""

from __future__ import annotations

import builtins  # a class here has a method named `list`: later annotations say builtins.list
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from talon.errors import AlreadyExists, Conflict, Invalid, NotFound, TalonError
from talon.resources.hooks import ResourceHook
from talon.resources.kinds import Agent, TemplateDefinition
from talon.resources.meta import Resource
from talon.resources.patch import merge_patch
from talon.resources.registry import APPLY_RANK, BY_NAME, Kind, parse_manifest
from talon.resources.resolution import (
    Resolution,
    VersionedTemplate,
    effective_server_refs,
    resolve_agent,
)
from talon.store.database import Database, RollbackOnly, Tx
from talon.store.resources import (
    LabelRequirement,
    Record,
    ResourceStore,
    decode_page_token,
    encode_page_token,
    namespace_not_found,
)

log = logging.getLogger(__name__)
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 100


@dataclass(frozen=True)
class ApplyResult:
    record: Record
    action: str  # created | configured | unchanged


@dataclass(frozen=True)
class Page:
    records: list[Record]
    next_page_token: str | None


# Kinds agents are resolved from: a change re-resolves the agents that use it, in the same
# transaction.
DEPENDED_ON_KINDS = ("AgentTemplate", "MCPServer")


class ResourceService:
    def __init__(
        self,
        db: Database,
        store: ResourceStore | None = None,
        *,
        checks: Sequence[Callable[[Resource], None]] = (),
        hooks: Sequence[ResourceHook] = (),
    ) -> None:
        self.db = db
        self.store = store or ResourceStore()
        # Policy checks the wiring adds (the tenancy policy): each raises Invalid naming the
        # fields it refuses, before anything is written.
        self.checks = tuple(checks)
        # Side effects of writes that belong to other parts (schedule state, the knowledge
        # index, lifecycle events), run in the writing transaction.
        self.hooks = tuple(hooks)

    # -- reads -------------------------------------------------------------------------------

    def get(self, kind: Kind, namespace: str, name: str) -> Record:
        with self.db.transaction() as tx:
            if kind.namespaced:
                self._require_namespace(tx, namespace, lock=False)
            record = self.store.get(tx, kind.name, namespace, name)
        if record is None:
            raise NotFound(_not_found_message(kind, namespace, name))
        return record

    def list(
        self,
        kind: Kind,
        namespace: str | None,
        *,
        limit: int = DEFAULT_PAGE_SIZE,
        page_token: str | None = None,
        selector: builtins.list[LabelRequirement] | None = None,
        visible_namespaces: builtins.list[str] | None = None,
    ) -> Page:
        after = decode_page_token(page_token) if page_token else None
        with self.db.transaction() as tx:
            if kind.namespaced and namespace is not None:
                self._require_namespace(tx, namespace, lock=False)
            records = self.store.list(
                tx,
                kind.name,
                namespace,
                after=after,
                limit=limit + 1,
                selector=selector,
                visible_namespaces=visible_namespaces,
            )
        token = encode_page_token(records[limit - 1].name) if len(records) > limit else None
        return Page(records[:limit], token)

    # -- writes ------------------------------------------------------------------------------

    def create(self, resource: Resource) -> Record:
        with self.db.transaction() as tx:
            return self._write(tx, resource, mode="create").record

    def replace(self, resource: Resource) -> Record:
        with self.db.transaction() as tx:
            return self._write(tx, resource, mode="replace").record

    def patch(self, kind: Kind, namespace: str, name: str, patch: dict[str, Any]) -> Record:
        with self.db.transaction() as tx:
            if kind.namespaced:
                self._require_namespace(tx, namespace, lock=True)
            current = self.store.get(tx, kind.name, namespace, name, lock="update")
            if current is None:
                raise NotFound(_not_found_message(kind, namespace, name))
            manifest = current.to_manifest(kind.body_field)
            manifest.pop("status", None)
            given_version = (patch.get("metadata") or {}).get("resourceVersion")
            merged = merge_patch(manifest, patch)
            merged["metadata"]["resourceVersion"] = given_version or str(current.resource_version)
            for field in ("name", "namespace"):
                if merged["metadata"].get(field) != manifest["metadata"].get(field):
                    raise Invalid(
                        f"metadata.{field} cannot be changed",
                        [{"path": f"metadata.{field}", "message": "is immutable"}],
                    )
            resource = parse_manifest(merged, namespace=namespace or None)
            return self._write(tx, resource, mode="replace").record

    def delete(self, kind: Kind, namespace: str, name: str) -> Record:
        with self.db.transaction() as tx:
            if kind.namespaced:
                self._require_namespace(tx, namespace, lock=True)
            record = self.store.get(tx, kind.name, namespace, name, lock="update")
            if record is None:
                raise NotFound(_not_found_message(kind, namespace, name))
            if kind.name == "Namespace":
                blockers = [
                    (k, n, "is in this namespace")
                    for k, n in self.store.namespace_contents(tx, name)
                ]
            else:
                blockers = [
                    (k, n, f"references this {kind.name}")
                    for k, n in self.store.dependents(tx, kind.name, namespace, name)
                ]
            if kind.name == "Agent":
                # Durable threads are not deleted as a side effect; delete them first.
                sessions = tx.all(
                    "SELECT id FROM sessions WHERE namespace = %s AND agent = %s ORDER BY id "
                    "LIMIT 20",
                    (namespace, name),
                )
                blockers += [("Session", r["id"], "belongs to this Agent") for r in sessions]
            if blockers:
                listed = ", ".join(f"{k}/{n}" for k, n, _ in blockers)
                raise Conflict(
                    f"{kind.name} {name!r} is still in use by {listed}",
                    [{"path": f"{k}/{n}", "message": reason} for k, n, reason in blockers],
                )
            self.store.delete(tx, record)
            for hook in self._hooks(kind.name):
                hook.deleted(tx, record)
            return record

    def apply(
        self, resources: builtins.list[Resource], *, dry_run: bool = False
    ) -> builtins.list[ApplyResult]:
        """Create or update every resource in one transaction (all or nothing)."""
        seen: dict[tuple[str, str, str], int] = {}
        for index, resource in enumerate(resources):
            key = (resource.kind, resource.metadata.namespace or "", resource.metadata.name)
            if key in seen:
                raise Invalid(
                    f"items[{index}] repeats items[{seen[key]}] ({key[0]} {key[2]!r})",
                    [{"path": f"items[{index}].metadata.name", "message": "duplicate in batch"}],
                )
            seen[key] = index
        order = sorted(range(len(resources)), key=lambda i: APPLY_RANK[resources[i].kind])
        results: dict[int, ApplyResult] = {}
        try:
            with self.db.transaction() as tx:
                for index in order:
                    try:
                        results[index] = self._write(tx, resources[index], mode="apply")
                    except TalonError as exc:
                        raise _prefix_error(exc, f"items[{index}]") from exc
                if dry_run:
                    raise RollbackOnly
        except RollbackOnly:
            pass
        return [results[i] for i in range(len(resources))]

    # -- internals ---------------------------------------------------------------------------

    def _write(self, tx: Tx, resource: Resource, *, mode: str) -> ApplyResult:
        for check in self.checks:
            check(resource)
        kind = BY_NAME[resource.kind]
        namespace = resource.metadata.namespace or ""
        name = resource.metadata.name
        if kind.namespaced:
            self._require_namespace(tx, namespace, lock=True)
        current = self.store.get(tx, kind.name, namespace, name, lock="update")
        if mode == "create" and current is not None:
            raise AlreadyExists(f"{kind.name} {name!r} already exists")
        if mode == "replace" and current is None:
            raise NotFound(_not_found_message(kind, namespace, name))
        expected = resource.metadata.resourceVersion
        if current is not None and expected and expected != str(current.resource_version):
            raise Conflict(
                f"{kind.name} {name!r} was modified: resourceVersion {expected} is stale "
                f"(current {current.resource_version}); read it again and retry",
                [{"path": "metadata.resourceVersion", "message": "stale"}],
            )
        refs = self._check_references(tx, resource)
        status: dict[str, Any] = current.status if current is not None else {}
        if isinstance(resource, Agent):
            resolution = self._resolve(tx, resource)
            status = _resolved_status(resolution, current)
            refs |= {("MCPServer", ref) for ref in resolution.server_refs}
        labels, annotations = resource.metadata.labels, resource.metadata.annotations
        body = resource.body()
        if current is not None and (body, labels, annotations, status) == (
            current.body,
            current.labels,
            current.annotations,
            current.status,
        ):
            return ApplyResult(current, "unchanged")
        values = {"labels": labels, "annotations": annotations, "body": body, "status": status}
        if current is None:
            record = self.store.insert(tx, kind.name, namespace, name, **values)
        else:
            record = self.store.update(tx, current, **values)
        self.store.set_refs(tx, kind.name, namespace, name, refs)
        if current is not None and kind.name in DEPENDED_ON_KINDS:
            self._reresolve_dependents(tx, kind.name, namespace, name)
        for hook in self._hooks(kind.name):
            hook.written(tx, record, created=current is None)
        return ApplyResult(record, "created" if current is None else "configured")

    def reconcile_dependents(self, kind: str, namespace: str, name: str) -> None:
        """Re-resolve the agents that depend on a resource (idempotent; used by the worker
        when a lifecycle event arrives, as a safety net behind the synchronous path)."""
        with self.db.transaction() as tx:
            self._reresolve_dependents(tx, kind, namespace, name)

    def _hooks(self, kind: str) -> builtins.list[ResourceHook]:
        return [hook for hook in self.hooks if kind in hook.kinds]

    def _require_namespace(self, tx: Tx, namespace: str, *, lock: bool) -> None:
        found = self.store.get(tx, "Namespace", "", namespace, lock="share" if lock else None)
        if found is None:
            raise namespace_not_found(namespace)

    def _check_references(self, tx: Tx, resource: Resource) -> set[tuple[str, str]]:
        namespace = resource.metadata.namespace or ""
        refs: set[tuple[str, str]] = set()
        problems = []
        for ref_kind, ref_name, path in resource.references():
            if self.store.get(tx, ref_kind, namespace, ref_name, lock="share") is None:
                problems.append(
                    {
                        "path": path,
                        "message": f"{ref_kind} {ref_name!r} not found in namespace {namespace!r}",
                    }
                )
            refs.add((ref_kind, ref_name))
        if problems:
            raise Invalid("; ".join(f"{p['path']}: {p['message']}" for p in problems), problems)
        return refs

    def _resolve(self, tx: Tx, agent: Agent) -> Resolution:
        namespace = agent.metadata.namespace or ""
        record = self.store.get(
            tx, "AgentTemplate", namespace, agent.spec.templateRef, lock="share"
        )
        if record is None:
            raise Invalid(
                f"AgentTemplate {agent.spec.templateRef!r} not found",
                [{"path": "spec.templateRef", "message": "AgentTemplate not found"}],
            )
        template = VersionedTemplate(
            record.name,
            record.resource_version,
            record.generation,
            TemplateDefinition.model_validate(record.body),
        )
        versions = {}
        for ref in effective_server_refs(agent, template.definition):
            server = self.store.get(tx, "MCPServer", namespace, ref, lock="share")
            if server is not None:
                versions[ref] = server.resource_version
        return resolve_agent(agent, template, versions)

    def _reresolve_dependents(self, tx: Tx, kind: str, namespace: str, name: str) -> None:
        for dep_kind, dep_name in self.store.dependents(tx, kind, namespace, name):
            if dep_kind != "Agent":
                continue
            record = self.store.get(tx, "Agent", namespace, dep_name, lock="update")
            if record is None:
                continue
            agent = parse_manifest(record.to_manifest("spec"))
            assert isinstance(agent, Agent)
            refs = {("AgentTemplate", agent.spec.templateRef)}
            try:
                resolution = self._resolve(tx, agent)
                status = _resolved_status(resolution, record)
                refs |= {("MCPServer", ref) for ref in resolution.server_refs}
            except Invalid as exc:
                log.warning("agent %s/%s no longer resolves: %s", namespace, dep_name, exc)
                status = {**record.status, "phase": "Failed", "message": exc.message}
                refs |= {("MCPServer", r) for r in agent.spec.overrides.mcpServerRefs or []}
            if status == record.status:
                continue
            self.store.update(
                tx,
                record,
                labels=record.labels,
                annotations=record.annotations,
                body=record.body,
                status=status,
            )
            self.store.set_refs(tx, "Agent", namespace, dep_name, refs)
            log.info("re-resolved agent %s/%s after %s %s changed", namespace, dep_name, kind, name)


def _resolved_status(resolution: Resolution, current: Record | None) -> dict[str, Any]:
    return {
        "phase": "Resolved",
        "message": "",
        "effective": resolution.effective,
        "resolvedFrom": resolution.resolved_from,
    }


def _not_found_message(kind: Kind, namespace: str, name: str) -> str:
    if kind.name == "Namespace":
        # Same words as the gateway's isolation answer, so the two cannot be told apart.
        return namespace_not_found(name).message
    where = f" in namespace {namespace!r}" if kind.namespaced else ""
    return f"{kind.name} {name!r} not found{where}"


def _prefix_error(exc: TalonError, prefix: str) -> TalonError:
    details = [
        {**d, "path": f"{prefix}.{d['path']}" if "/" not in d["path"] else d["path"]}
        for d in exc.details
    ]
    prefixed = type(exc)(f"{prefix}: {exc.message}", details)
    return prefixed
