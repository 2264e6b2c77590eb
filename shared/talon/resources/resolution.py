"""Template resolution: an Agent plus its template (and servers) -> an effective spec.

Pure functions over validated models; the service loads the inputs and stores the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from talon.errors import Invalid
from talon.resources.kinds import Agent, TemplateDefinition, feature_value_matches


@dataclass(frozen=True)
class VersionedTemplate:
    name: str
    resource_version: int
    generation: int
    definition: TemplateDefinition


@dataclass(frozen=True)
class Resolution:
    effective: dict[str, Any]
    resolved_from: dict[str, Any]
    server_refs: list[str]


def effective_server_refs(agent: Agent, template: TemplateDefinition) -> list[str]:
    overridden = agent.spec.overrides.mcpServerRefs
    return list(overridden if overridden is not None else template.mcpServerRefs)


def resolve_agent(
    agent: Agent, template: VersionedTemplate, server_versions: dict[str, int]
) -> Resolution:
    """Merge template and overrides; raise Invalid naming each offending agent field."""
    definition = template.definition
    overrides = agent.spec.overrides
    features = _resolve_features(agent, template)
    refs = effective_server_refs(agent, definition)
    missing = [ref for ref in refs if ref not in server_versions]
    if missing:
        path = (
            "spec.overrides.mcpServerRefs"
            if overrides.mcpServerRefs is not None
            else ("spec.templateRef")
        )
        raise Invalid(
            f"MCP servers not found: {', '.join(missing)}",
            [{"path": path, "message": f"MCPServer {ref!r} does not exist"} for ref in missing],
        )
    model_policy = overrides.modelPolicy or definition.modelPolicy
    effective = {
        "templateRef": template.name,
        "features": features,
        "modelPolicy": model_policy.model_dump(mode="json", exclude_none=True),
        "systemPrompt": (
            overrides.systemPrompt
            if overrides.systemPrompt is not None
            else definition.systemPrompt
        ),
        "mcpServerRefs": refs,
        "skills": list(overrides.skills if overrides.skills is not None else definition.skills),
    }
    resolved_from = {
        "template": {
            "name": template.name,
            "resourceVersion": str(template.resource_version),
            "generation": template.generation,
        },
        "mcpServers": [{"name": ref, "resourceVersion": str(server_versions[ref])} for ref in refs],
    }
    return Resolution(effective, resolved_from, refs)


def _resolve_features(agent: Agent, template: VersionedTemplate) -> dict[str, Any]:
    declared = {f.name: f for f in template.definition.customSpec.features}
    values = agent.spec.features
    problems = []
    for name in values:
        if name not in declared:
            problems.append(
                {
                    "path": f"spec.features.{name}",
                    "message": f"not declared by template {template.name!r}",
                }
            )
    resolved: dict[str, Any] = {}
    for name, decl in declared.items():
        if name in values:
            if not feature_value_matches(decl.type, values[name]):
                problems.append(
                    {"path": f"spec.features.{name}", "message": f"must be of type {decl.type}"}
                )
            resolved[name] = values[name]
        elif decl.default is not None:
            resolved[name] = decl.default
        elif decl.required:
            problems.append(
                {
                    "path": f"spec.features.{name}",
                    "message": f"required by template {template.name!r}",
                }
            )
    if problems:
        raise Invalid(
            f"agent features do not match template {template.name!r}: "
            + "; ".join(f"{p['path']}: {p['message']}" for p in problems),
            problems,
        )
    return resolved
