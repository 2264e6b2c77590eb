"""talon.v1.Namespaces, AgentTemplates, Agents, Schedules, Knowledge, MCPServers, MCPBindings
and Apply: resource CRUD through the same calls as the HTTP API (talon.actions.resources and
the resource service)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import grpc
from google.protobuf.message import Message

from talon.actions import resources as actions
from talon.errors import BadRequest
from talon.grpc.calls import Calls, guarded, page_size, required
from talon.grpc.convert import from_struct, to_manifest, to_message, to_struct
from talon.grpc.gen import (
    agent_templates_pb2,
    agent_templates_pb2_grpc,
    agents_pb2,
    agents_pb2_grpc,
    apply_pb2,
    apply_pb2_grpc,
    knowledge_pb2,
    knowledge_pb2_grpc,
    mcp_bindings_pb2,
    mcp_bindings_pb2_grpc,
    mcp_servers_pb2,
    mcp_servers_pb2_grpc,
    namespaces_pb2,
    namespaces_pb2_grpc,
    schedules_pb2,
    schedules_pb2_grpc,
)
from talon.grpc.masks import apply_mask, check_mask
from talon.resources.registry import BY_NAME, Kind, parse_manifest
from talon.services import Services


@dataclass(frozen=True)
class KindService:
    """How one kind's CRUD service is named in talon.v1."""

    kind: Kind
    service: str  # Agents
    singular: str  # Agent, as in GetAgent
    message: str  # the resource message: Agent (KnowledgeBase for Knowledge)
    field: str  # the request field holding one: agent
    list_field: str  # the response field holding a page: agents
    pb2: ModuleType
    pb2_grpc: ModuleType


KIND_SERVICES = (
    KindService(BY_NAME["Namespace"], "Namespaces", "Namespace", "Namespace", "namespace",
                "namespaces", namespaces_pb2, namespaces_pb2_grpc),
    KindService(BY_NAME["AgentTemplate"], "AgentTemplates", "AgentTemplate", "AgentTemplate",
                "agent_template", "agent_templates", agent_templates_pb2, agent_templates_pb2_grpc),
    KindService(BY_NAME["Agent"], "Agents", "Agent", "Agent", "agent", "agents", agents_pb2,
                agents_pb2_grpc),
    KindService(BY_NAME["Schedule"], "Schedules", "Schedule", "Schedule", "schedule",
                "schedules", schedules_pb2, schedules_pb2_grpc),
    KindService(BY_NAME["Knowledge"], "Knowledge", "Knowledge", "KnowledgeBase", "knowledge",
                "knowledge", knowledge_pb2, knowledge_pb2_grpc),
    KindService(BY_NAME["MCPServer"], "MCPServers", "MCPServer", "MCPServer", "mcp_server",
                "mcp_servers", mcp_servers_pb2, mcp_servers_pb2_grpc),
    KindService(BY_NAME["MCPBinding"], "MCPBindings", "MCPBinding", "MCPBinding", "mcp_binding",
                "mcp_bindings", mcp_bindings_pb2, mcp_bindings_pb2_grpc),
)  # fmt: skip


class KindServicer:
    """List, Get, Create, Update (replace) and Delete for one kind; add_to_server registers
    them under the service's method names."""

    def __init__(self, calls: Calls, spec: KindService) -> None:
        self.calls, self.spec, self.kind = calls, spec, spec.kind
        self.write_role = "write" if spec.kind.namespaced else "admin"

    @property
    def services(self) -> Services:
        return self.calls.services

    def _message(self, manifest: dict[str, Any]) -> Message:
        message: Message = to_message(manifest, getattr(self.spec.pb2, self.spec.message))
        return message

    def _where(self, request: Any, name: str = "") -> tuple[str, str | None]:
        """(the namespace the core is given, the one the caller must see): a namespaced
        kind's request names it; a Namespace is seen by its own name."""
        if self.kind.namespaced:
            namespace = required(request.namespace, "namespace")
            return namespace, namespace
        return "", name or None

    def list(self, request: Any, context: grpc.ServicerContext) -> Message:
        namespace, visible = self._where(request)

        def body(principal: Any) -> Message:
            page = actions.list_manifests(
                self.services, principal, self.kind, namespace,
                limit=page_size(request.page_size), page_token=request.page_token or None,
                label_selector=request.label_selector,
            )  # fmt: skip
            response = getattr(self.spec.pb2, f"List{self.spec.service}Response")()
            getattr(response, self.spec.list_field).extend(self._message(m) for m in page.items)
            response.next_page_token = page.next_page_token or ""
            return response

        return self.calls.run(context, "read", visible, body)

    def get(self, request: Any, context: grpc.ServicerContext) -> Message:
        name = required(request.name, "name")
        namespace, visible = self._where(request, name)
        return self.calls.run(
            context, "read", visible,
            lambda _: self._message(actions.get_manifest(self.services, self.kind, namespace,
                                                         name)),
        )  # fmt: skip

    def create(self, request: Any, context: grpc.ServicerContext) -> Message:
        namespace, _ = self._where(request)
        field = self.spec.field

        def body(principal: Any) -> Message:
            resource = parse_manifest(
                to_manifest(getattr(request, field)), expected_kind=self.kind, namespace=namespace
            )
            record = actions.create(self.services, principal, resource)
            return self._message(record.to_manifest(self.kind.body_field))

        # A Namespace is authorized on its own name after parsing (actions.create).
        visible = namespace if self.kind.namespaced else None
        return self.calls.run(context, self.write_role, visible, body, prefix=f"{field}.")

    def update(self, request: Any, context: grpc.ServicerContext) -> Message:
        field = self.spec.field
        given = getattr(request, field)
        namespace, visible = self._where(request, given.metadata.name)

        paths = list(request.update_mask.paths)
        check_mask(paths, self.kind.body_field)

        def body(principal: Any) -> Message:
            manifest = to_manifest(given)
            if paths:
                manifest = self._masked(namespace, manifest, paths)
            resource = parse_manifest(manifest, expected_kind=self.kind, namespace=namespace)
            record = self.services.resources.replace(resource)
            return self._message(record.to_manifest(self.kind.body_field))

        return self.calls.run(context, self.write_role, visible, body, prefix=f"{field}.")

    def _masked(
        self, namespace: str, given: dict[str, Any], paths: Sequence[str]
    ) -> dict[str, Any]:
        """The stored manifest with the masked paths from `given`, at the version read (or
        the one given): a write in between makes the replace a conflict, not a lost update."""
        name = (given.get("metadata") or {}).get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest("metadata.name is required",
                             [{"path": "metadata.name", "message": "required"}])  # fmt: skip
        current = self.services.resources.get(self.kind, namespace, name)
        stored = current.to_manifest(self.kind.body_field)
        stored.pop("status", None)
        merged = apply_mask(stored, given, paths)
        version = (given.get("metadata") or {}).get("resourceVersion")
        merged.setdefault("metadata", {})["resourceVersion"] = version or str(
            current.resource_version
        )
        return merged

    def delete(self, request: Any, context: grpc.ServicerContext) -> Message:
        name = required(request.name, "name")
        namespace, visible = self._where(request, name)

        def body(principal: Any) -> Message:
            record = self.services.resources.delete(self.kind, namespace, name)
            return self._message(record.to_manifest(self.kind.body_field))

        return self.calls.run(context, self.write_role, visible, body)

    def add_to_server(self, server: grpc.Server) -> None:
        spec = self.spec
        servicer = getattr(spec.pb2_grpc, f"{spec.service}Servicer")()
        for method, handler in (
            (f"List{spec.service}", self.list), (f"Get{spec.singular}", self.get),
            (f"Create{spec.singular}", self.create), (f"Update{spec.singular}", self.update),
            (f"Delete{spec.singular}", self.delete),
        ):  # fmt: skip
            setattr(servicer, method, guarded(handler))
        if spec.service == "Schedules":
            setattr(servicer, "RunSchedule", guarded(self.run_schedule))  # noqa: B010
            setattr(servicer, "ListScheduleFires", guarded(self.schedule_fires))  # noqa: B010
        getattr(spec.pb2_grpc, f"add_{spec.service}Servicer_to_server")(servicer, server)

    # -- schedules beyond CRUD ---------------------------------------------------------------

    def run_schedule(self, request: Any, context: grpc.ServicerContext) -> Message:
        namespace, name = required(request.namespace, "namespace"), required(request.name, "name")
        return self.calls.run(
            context, "write", namespace,
            lambda _: schedules_pb2.RunScheduleResponse(
                fire=to_struct(actions.run_schedule(self.services, namespace, name))),
        )  # fmt: skip

    def schedule_fires(self, request: Any, context: grpc.ServicerContext) -> Message:
        namespace, name = required(request.namespace, "namespace"), required(request.name, "name")

        def body(_: Any) -> Message:
            fires = actions.schedule_fires(self.services, namespace, name)
            return schedules_pb2.ListScheduleFiresResponse(
                next_fire_at=fires["nextFireAt"] or "",
                fires=[to_struct(item) for item in fires["items"]],
            )

        return self.calls.run(context, "read", namespace, body)


class ApplyServicer(apply_pb2_grpc.ApplyServicer):
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    @guarded
    def Apply(
        self, request: apply_pb2.ApplyRequest, context: grpc.ServicerContext
    ) -> apply_pb2.ApplyResponse:
        documents = [from_struct(manifest) for manifest in request.manifests]

        def body(principal: Any) -> apply_pb2.ApplyResponse:
            result = actions.apply_documents(
                self.calls.services, principal, documents, dry_run=request.dry_run
            )
            return to_message(
                {
                    "dryRun": result["dryRun"],
                    "items": [{**item, "namespace": item["namespace"] or ""}
                              for item in result["items"]],
                },
                apply_pb2.ApplyResponse,
            )  # fmt: skip

        # Item paths (items[2].spec...) are the request's manifests[2]...
        return self.calls.run(context, "write", None, body, rename={"items": "manifests"})


def add_resource_services(server: grpc.Server, calls: Calls) -> list[str]:
    """Register every resource service; return their full names (for health and reflection)."""
    names = []
    for spec in KIND_SERVICES:
        KindServicer(calls, spec).add_to_server(server)
        names.append(f"talon.v1.{spec.service}")
    apply_pb2_grpc.add_ApplyServicer_to_server(ApplyServicer(calls), server)
    names.append("talon.v1.Apply")
    return names
