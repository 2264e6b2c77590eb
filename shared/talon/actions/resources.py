"""Resource calls: list, read, create and apply, as the caller may make them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from talon.auth.principal import Principal
from talon.errors import Invalid, NotFound, PermissionDenied, TalonError
from talon.resources.meta import Resource
from talon.resources.registry import BY_NAME, Kind, parse_manifest
from talon.resources.service import DEFAULT_PAGE_SIZE
from talon.scheduling.fires import RECENT_FIRES
from talon.scheduling.timing import next_fire_at
from talon.services import Services
from talon.store.resources import Record, parse_label_selector

MAX_APPLY_ITEMS = 500
LAST_FIRES = 5  # shown on the schedule itself; `.../fires` has more


@dataclass(frozen=True)
class ManifestPage:
    items: list[dict[str, Any]]
    next_page_token: str | None


def list_manifests(
    services: Services,
    principal: Principal,
    kind: Kind,
    namespace: str | None,
    *,
    limit: int = DEFAULT_PAGE_SIZE,
    page_token: str | None = None,
    label_selector: str = "",
) -> ManifestPage:
    """One page of a kind's manifests; across namespaces (`namespace` None) only those the
    principal sees."""
    page = services.resources.list(
        kind,
        namespace,
        limit=limit,
        page_token=page_token,
        selector=parse_label_selector(label_selector),
        visible_namespaces=principal.visible_namespaces if not namespace else None,
    )
    return ManifestPage(manifests(services, kind, page.records), page.next_page_token)


def get_manifest(services: Services, kind: Kind, namespace: str, name: str) -> dict[str, Any]:
    return manifests(services, kind, [services.resources.get(kind, namespace, name)])[0]


def manifests(services: Services, kind: Kind, records: list[Record]) -> list[dict[str, Any]]:
    """Manifests as read back: schedules carry their live fire status."""
    found = [r.to_manifest(kind.body_field) for r in records]
    if kind.name == "Schedule":
        for manifest, live in zip(found, schedule_statuses(services, records), strict=True):
            manifest["status"] = {**manifest.get("status", {}), **live}
    return found


def schedule_statuses(services: Services, records: list[Record]) -> list[dict[str, Any]]:
    """What a schedule's GET (and list) adds to its status: when it fires next and how its
    last fires went."""
    now = datetime.now(UTC)
    keys = [(r.namespace, r.name) for r in records]
    fires = services.schedules.recent_many(keys, limit=LAST_FIRES)
    return [
        {"nextFireAt": next_fire_at(r.body, now), "lastFires": fires[key]}
        for r, key in zip(records, keys, strict=True)
    ]


def create(services: Services, principal: Principal, resource: Resource) -> Record:
    if resource.kind == "Namespace" and not principal.can_see(resource.metadata.name):
        # Refused before looking, so a scoped token cannot probe which namespaces exist.
        raise PermissionDenied(
            "this token may only create the namespaces it is scoped to",
            [{"path": "metadata.name", "message": "outside the token's namespaces"}],
        )
    return services.resources.create(resource)


def apply_documents(
    services: Services, principal: Principal, documents: list[Any], *, dry_run: bool
) -> dict[str, Any]:
    """Server-side apply of manifests of any kinds, in one transaction."""
    if not documents:
        raise Invalid("nothing to apply", [{"path": "items", "message": "empty"}])
    if len(documents) > MAX_APPLY_ITEMS:
        raise Invalid(
            f"at most {MAX_APPLY_ITEMS} manifests per apply",
            [{"path": "items", "message": f"{len(documents)} items"}],
        )
    resources: list[Resource] = []
    problems: list[dict[str, str]] = []
    for index, document in enumerate(documents):
        try:
            resources.append(parse_manifest(document, path=f"items[{index}]"))
        except TalonError as exc:
            problems.extend(exc.details)
    if problems:
        raise Invalid(
            f"{len(problems)} problem(s) in the manifests: "
            + "; ".join(f"{p['path']}: {p['message']}" for p in problems[:5]),
            problems,
        )
    for index, resource in enumerate(resources):
        # The namespace an item lives in, or (a Namespace item) the one it is: either way
        # one outside the token's scope reads exactly like a missing one, dry run or not.
        is_namespace = resource.kind == "Namespace"
        namespace = resource.metadata.name if is_namespace else resource.metadata.namespace
        if namespace is not None and not principal.can_see(namespace):
            field = "metadata.name" if is_namespace else "metadata.namespace"
            raise NotFound(
                f"namespace {namespace!r} not found",
                [{"path": f"items[{index}].{field}", "message": "not found"}],
            )
        if resource.kind == "Namespace" and not principal.has_role("admin"):
            raise PermissionDenied(
                "creating or changing namespaces needs an admin token",
                [{"path": f"items[{index}].kind", "message": "needs the admin role"}],
            )
    items = []
    for result in services.resources.apply(resources, dry_run=dry_run):
        kind = BY_NAME[result.record.kind]
        items.append(
            {
                "kind": kind.name,
                "namespace": result.record.namespace or None,
                "name": result.record.name,
                "action": result.action,
                "resourceVersion": str(result.record.resource_version),
                "object": result.record.to_manifest(kind.body_field),
            }
        )
    return {"dryRun": dry_run, "items": items}


def run_schedule(services: Services, namespace: str, name: str) -> dict[str, Any]:
    """Fire the schedule now."""
    return services.schedules.fire(namespace, name, datetime.now(UTC), "run")


def schedule_fires(
    services: Services, namespace: str, name: str, *, limit: int = RECENT_FIRES
) -> dict[str, Any]:
    """The schedule's next fire time and its `limit` most recent fires (NotFound like a
    read)."""
    record = services.resources.get(BY_NAME["Schedule"], namespace, name)
    return {
        "nextFireAt": next_fire_at(record.body, datetime.now(UTC)),
        "items": services.schedules.recent(namespace, name, limit=limit),
    }
