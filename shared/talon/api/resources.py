"""Handlers for resource CRUD under /v1/ns/{ns}/..., /v1/namespaces, and /v1/apply."""

from __future__ import annotations

from typing import Any

from talon import API_VERSION
from talon.api.body import parse_body
from talon.api.params import DRY_RUN, LABEL_SELECTOR, LIMIT, PAGE_TOKEN
from talon.api.routing import Answer, Context, Route
from talon.api.schedules import schedule_statuses
from talon.errors import Invalid, NotFound, PermissionDenied, TalonError
from talon.resources.meta import Resource
from talon.resources.registry import BY_NAME, KINDS, Kind, parse_manifest
from talon.store.resources import Record, parse_label_selector

NAMESPACE = BY_NAME["Namespace"]
NAMESPACE_PREFIXES = ("/v1/ns/<ns>", "/v1/namespaces/<ns>")
MAX_APPLY_ITEMS = 500
LIST_QUERY = (LIMIT, PAGE_TOKEN, LABEL_SELECTOR)


def _manifest(kind: Kind, record: Record) -> dict[str, Any]:
    return record.to_manifest(kind.body_field)


def list_resources(ctx: Context, kind: Kind, ns: str | None = None) -> dict[str, Any]:
    assert ctx.principal is not None
    selector = parse_label_selector(ctx.param("labelSelector") or "")
    page = ctx.services.resources.list(
        kind,
        ns,
        limit=ctx.param("limit"),
        page_token=ctx.param("pageToken") or None,
        selector=selector,
        visible_namespaces=ctx.principal.visible_namespaces if not ns else None,
    )
    return {
        "apiVersion": API_VERSION,
        "kind": f"{kind.name}List",
        "items": _manifests(ctx, kind, page.records),
        "nextPageToken": page.next_page_token,
    }


def _manifests(ctx: Context, kind: Kind, records: list[Record]) -> list[dict[str, Any]]:
    """Manifests as read back: schedules carry their live fire status."""
    manifests = [_manifest(kind, r) for r in records]
    if kind.name == "Schedule":
        for manifest, live in zip(manifests, schedule_statuses(ctx, records), strict=True):
            manifest["status"] = {**manifest.get("status", {}), **live}
    return manifests


def _body_resource(ctx: Context, kind: Kind, ns: str | None, name: str | None = None) -> Resource:
    body = parse_body(ctx.request, ctx.services.settings.gateway.max_body_bytes)
    if isinstance(body, dict) and name is not None:
        body = dict(body)
        meta = body.get("metadata")
        if meta is None and "name" not in body:
            body["metadata"] = {"name": name}
        elif isinstance(meta, dict) and "name" not in meta:
            body["metadata"] = {**meta, "name": name}
    resource = parse_manifest(body, expected_kind=kind, namespace=ns)
    if name is not None and resource.metadata.name != name:
        raise Invalid(
            "metadata.name does not match the name in the URL",
            [{"path": "metadata.name", "message": f"must be {name!r}"}],
        )
    return resource


def create_resource(ctx: Context, kind: Kind, ns: str | None = None) -> tuple[int, Any]:
    resource = _body_resource(ctx, kind, ns)
    assert ctx.principal is not None
    if kind.name == "Namespace" and not ctx.principal.can_see(resource.metadata.name):
        # Refused before looking, so a scoped token cannot probe which namespaces exist.
        raise PermissionDenied(
            "this token may only create the namespaces it is scoped to",
            [{"path": "metadata.name", "message": "outside the token's namespaces"}],
        )
    record = ctx.services.resources.create(resource)
    return 201, _manifest(kind, record)


def get_resource(ctx: Context, kind: Kind, ns: str, name: str) -> dict[str, Any]:
    return _manifests(ctx, kind, [ctx.services.resources.get(kind, ns, name)])[0]


def replace_resource(ctx: Context, kind: Kind, ns: str | None, name: str) -> dict[str, Any]:
    resource = _body_resource(ctx, kind, ns, name)
    return _manifest(kind, ctx.services.resources.replace(resource))


def patch_resource(ctx: Context, kind: Kind, ns: str, name: str) -> dict[str, Any]:
    patch = parse_body(ctx.request, ctx.services.settings.gateway.max_body_bytes)
    if not isinstance(patch, dict):
        raise Invalid(
            "a merge patch must be an object", [{"path": "(body)", "message": "expected an object"}]
        )
    return _manifest(kind, ctx.services.resources.patch(kind, ns, name, patch))


def delete_resource(ctx: Context, kind: Kind, ns: str, name: str) -> dict[str, Any]:
    return _manifest(kind, ctx.services.resources.delete(kind, ns, name))


def apply_manifests(ctx: Context) -> dict[str, Any]:
    assert ctx.principal is not None
    body = parse_body(
        ctx.request, ctx.services.settings.gateway.max_body_bytes, multi_document=True
    )
    if (isinstance(body, dict) and "items" in body and "kind" not in body) or (
        isinstance(body, dict) and body.get("kind") == "List"
    ):
        body = body.get("items")
    documents = body if isinstance(body, list) else [body]
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
        if namespace is not None and not ctx.principal.can_see(namespace):
            field = "metadata.name" if is_namespace else "metadata.namespace"
            raise NotFound(
                f"namespace {namespace!r} not found",
                [{"path": f"items[{index}].{field}", "message": "not found"}],
            )
        if resource.kind == "Namespace" and not ctx.principal.has_role("admin"):
            raise PermissionDenied(
                "creating or changing namespaces needs an admin token",
                [{"path": f"items[{index}].kind", "message": "needs the admin role"}],
            )
    dry_run = ctx.param("dryRun")
    results = ctx.services.resources.apply(resources, dry_run=dry_run)
    items = []
    for result in results:
        kind = BY_NAME[result.record.kind]
        items.append(
            {
                "kind": kind.name,
                "namespace": result.record.namespace or None,
                "name": result.record.name,
                "action": result.action,
                "resourceVersion": str(result.record.resource_version),
                "object": _manifest(kind, result.record),
            }
        )
    return {"dryRun": dry_run, "items": items}


def _bind(handler: Any, kind: Kind, rename: dict[str, str] | None = None) -> Any:
    def bound(ctx: Context, **args: str) -> Any:
        for source, target in (rename or {}).items():
            args[target] = args[source]
            if source != "ns":
                args.pop(source)
        if kind.name == "Namespace":
            args["ns"] = ""
        return handler(ctx, kind, **args)

    bound.__name__ = f"{handler.__name__}_{kind.plural}"
    return bound


def _list_schema(kind: Kind) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "items", "nextPageToken"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": API_VERSION},
            "kind": {"const": f"{kind.name}List"},
            "items": {"type": "array", "items": {"$ref": f"#/components/schemas/{kind.name}"}},
            "nextPageToken": {"type": ["string", "null"], "description": "null: last page."},
        },
    }


def _crud_routes(
    kind: Kind, base: str, item: str, *, write_role: str, rename: dict[str, str] | None = None
) -> list[Route]:
    """List, create, get, replace, merge-patch and delete for one kind under one prefix."""
    tags = (kind.plural,)
    one = (Answer(200, kind.name),)
    return [
        Route("GET", base, _bind(list_resources, kind), f"List {kind.name} resources.",
              tags=tags, query=LIST_QUERY, answers=(Answer(200, _list_schema(kind)),)),
        Route("POST", base, _bind(create_resource, kind), f"Create a {kind.name}.",
              role=write_role, request_schema=kind.name, tags=tags,
              answers=(Answer(201, kind.name),)),
        Route("GET", item, _bind(get_resource, kind, rename), f"Get a {kind.name}.",
              tags=tags, answers=one),
        Route("PUT", item, _bind(replace_resource, kind, rename), f"Replace a {kind.name}.",
              role=write_role, request_schema=kind.name, tags=tags, answers=one),
        Route("PATCH", item, _bind(patch_resource, kind, rename),
              f"Merge-patch (RFC 7386) a {kind.name}.", role=write_role,
              request_schema="MergePatch", tags=tags, answers=one),
        Route("DELETE", item, _bind(delete_resource, kind, rename),
              f"Delete a {kind.name} (409 while others depend on it)." if kind.namespaced
              else "Delete an empty namespace.",
              role=write_role, tags=tags, answers=one),
    ]  # fmt: skip


def resource_routes() -> list[Route]:
    routes = [
        Route(
            "POST",
            "/v1/apply",
            apply_manifests,
            "Create or update a list of manifests in one transaction (server-side apply).",
            role="write",
            request_schema="ApplyRequest",
            tags=("apply",),
            query=(DRY_RUN,),
            answers=(Answer(200, "ApplyResult"),),
        ),
    ]
    # A namespace's name is the `ns` of the routes inside it.
    item = "/v1/namespaces/<ns>"
    routes += _crud_routes(
        NAMESPACE, "/v1/namespaces", item, write_role="admin", rename={"ns": "name"}
    )
    for kind in KINDS:
        if kind.namespaced:
            for prefix in NAMESPACE_PREFIXES:
                base = f"{prefix}/{kind.plural}"
                routes += _crud_routes(kind, base, f"{base}/<name>", write_role="write")
    return routes
