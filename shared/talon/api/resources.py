"""Handlers for resource CRUD under /v1/ns/{ns}/..., /v1/namespaces, and /v1/apply."""

from __future__ import annotations

from typing import Any

from talon import API_VERSION
from talon.actions import resources as actions
from talon.api.body import parse_body
from talon.api.params import DRY_RUN, LABEL_SELECTOR, LIMIT, PAGE_TOKEN
from talon.api.routing import Answer, Context, Route
from talon.errors import Invalid
from talon.resources.meta import Resource
from talon.resources.registry import BY_NAME, KINDS, Kind, parse_manifest
from talon.store.resources import Record

NAMESPACE = BY_NAME["Namespace"]
NAMESPACE_PREFIXES = ("/v1/ns/<ns>", "/v1/namespaces/<ns>")
LIST_QUERY = (LIMIT, PAGE_TOKEN, LABEL_SELECTOR)


def _manifest(kind: Kind, record: Record) -> dict[str, Any]:
    return record.to_manifest(kind.body_field)


def list_resources(ctx: Context, kind: Kind, ns: str | None = None) -> dict[str, Any]:
    assert ctx.principal is not None
    page = actions.list_manifests(
        ctx.services,
        ctx.principal,
        kind,
        ns,
        limit=ctx.param("limit"),
        page_token=ctx.param("pageToken") or None,
        label_selector=ctx.param("labelSelector") or "",
    )
    return {
        "apiVersion": API_VERSION,
        "kind": f"{kind.name}List",
        "items": page.items,
        "nextPageToken": page.next_page_token,
    }


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
    return 201, _manifest(kind, actions.create(ctx.services, ctx.principal, resource))


def get_resource(ctx: Context, kind: Kind, ns: str, name: str) -> dict[str, Any]:
    return actions.get_manifest(ctx.services, kind, ns, name)


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
    return actions.apply_documents(
        ctx.services, ctx.principal, documents, dry_run=ctx.param("dryRun")
    )


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
