"""The catalogue of kinds: URL plurals, CLI aliases, scope, and manifest parsing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from talon import API_VERSION
from talon.errors import Invalid, details_from_validation_error
from talon.resources.kinds import Agent, AgentTemplate, Knowledge, Namespace
from talon.resources.mcp_kinds import MCPBinding, MCPServer
from talon.resources.meta import Resource
from talon.resources.schedule_kind import Schedule


@dataclass(frozen=True)
class Kind:
    name: str
    plural: str
    model: type[Resource]
    namespaced: bool
    aliases: tuple[str, ...] = ()

    @property
    def body_field(self) -> str:
        return self.model.BODY_FIELD


# Apply order: a resource comes after everything it may reference.
KINDS: tuple[Kind, ...] = (
    Kind("Namespace", "namespaces", Namespace, False, ("namespace", "ns")),
    Kind("MCPServer", "mcp-servers", MCPServer, True, ("mcpserver", "mcpservers", "mcp-server")),
    Kind("Knowledge", "knowledge", Knowledge, True, ("knowledges",)),
    Kind(
        "AgentTemplate",
        "agent-templates",
        AgentTemplate,
        True,
        ("agenttemplate", "agenttemplates", "agent-template", "template", "templates"),
    ),
    Kind("Agent", "agents", Agent, True, ("agent",)),
    Kind(
        "MCPBinding", "mcp-bindings", MCPBinding, True, ("mcpbinding", "mcpbindings", "mcp-binding")
    ),
    Kind("Schedule", "schedules", Schedule, True, ("schedule",)),
)
BY_NAME = {k.name: k for k in KINDS}
BY_PLURAL = {k.plural: k for k in KINDS}
APPLY_RANK = {k.name: i for i, k in enumerate(KINDS)}
_BY_ALIAS = {a: k for k in KINDS for a in (k.name.lower(), k.plural, *k.aliases)}


def kind_for_alias(alias: str) -> Kind | None:
    """CLI lookup: 'agents', 'agent', 'Agent', 'ns', ... -> Kind."""
    return _BY_ALIAS.get(alias.lower())


def parse_manifest(
    document: Any,
    *,
    path: str = "",
    expected_kind: Kind | None = None,
    namespace: str | None = None,
) -> Resource:
    """Validate one manifest. `path` prefixes error paths (e.g. 'items[2]').

    With `expected_kind` (a typed route), apiVersion and kind may be omitted, and the compact
    seed shape `{name, ns, spec}` is accepted. `namespace` (from the route) fills a missing
    metadata.namespace and must match a given one.
    """
    prefix = f"{path}." if path else ""
    if not isinstance(document, dict):
        raise Invalid(
            "a manifest must be an object",
            [{"path": path or "(root)", "message": "expected an object"}],
        )
    doc = dict(document)
    if expected_kind is not None:
        doc.setdefault("apiVersion", API_VERSION)
        doc.setdefault("kind", expected_kind.name)
        if "metadata" not in doc and "name" in doc:
            doc["metadata"] = {"name": doc.pop("name")}
            if "ns" in doc:
                doc["metadata"]["namespace"] = doc.pop("ns")
    kind_name = doc.get("kind")
    kind = BY_NAME.get(kind_name) if isinstance(kind_name, str) else None
    if kind is None:
        known = ", ".join(BY_NAME)
        raise Invalid(
            f"unknown kind {kind_name!r}",
            [{"path": f"{prefix}kind", "message": f"must be one of: {known}"}],
        )
    if expected_kind is not None and kind is not expected_kind:
        raise Invalid(
            f"this route takes {expected_kind.name}, not {kind.name}",
            [{"path": f"{prefix}kind", "message": f"must be {expected_kind.name}"}],
        )
    metadata = doc.get("metadata")
    if isinstance(metadata, dict):
        metadata = dict(metadata)
        doc["metadata"] = metadata
        if kind.namespaced:
            given = metadata.get("namespace")
            if namespace is not None and given not in (None, namespace):
                raise Invalid(
                    "metadata.namespace does not match the namespace of the route",
                    [{"path": f"{prefix}metadata.namespace", "message": f"must be {namespace!r}"}],
                )
            if given is None and namespace is not None:
                metadata["namespace"] = namespace
        elif metadata.get("namespace") is not None:
            raise Invalid(
                f"{kind.name} is not namespaced",
                [{"path": f"{prefix}metadata.namespace", "message": "must not be set"}],
            )
    try:
        resource = kind.model.model_validate(doc)
    except ValidationError as exc:
        details = details_from_validation_error(exc, path)
        raise Invalid(
            f"invalid {kind.name}: {details[0]['path']}: {details[0]['message']}", details
        ) from exc
    if kind.namespaced and resource.metadata.namespace is None:
        raise Invalid(
            f"{kind.name} needs a namespace",
            [{"path": f"{prefix}metadata.namespace", "message": "field required"}],
        )
    return resource
