"""Template resolution as a pure function."""

from __future__ import annotations

from typing import Any

import pytest

from talon.errors import Invalid
from talon.resources.kinds import Agent, AgentTemplate
from talon.resources.registry import parse_manifest
from talon.resources.resolution import VersionedTemplate, resolve_agent

pytestmark = pytest.mark.fast

V = "talon.dev/v1alpha1"


def template() -> VersionedTemplate:
    parsed = parse_manifest({
        "apiVersion": V, "kind": "AgentTemplate", "metadata": {"name": "support", "namespace": "n"},
        "definition": {
            "customSpec": {"features": [
                {"name": "customer_id", "type": "string", "required": True},
                {"name": "tier", "type": "string", "default": "standard"},
                {"name": "max_refund", "type": "number"},
            ]},
            "modelPolicy": {"profiles": [
                {"name": "primary", "model": {"provider": "openai", "name": "gpt-4o"}},
            ]},
            "systemPrompt": "You are support.",
            "mcpServerRefs": ["stripe"],
        },
    })  # fmt: skip
    assert isinstance(parsed, AgentTemplate)
    return VersionedTemplate("support", 7, 2, parsed.definition)


def agent(**spec: Any) -> Agent:
    parsed = parse_manifest({"apiVersion": V, "kind": "Agent",
                             "metadata": {"name": "a", "namespace": "n"},
                             "spec": {"templateRef": "support", **spec}})  # fmt: skip
    assert isinstance(parsed, Agent)
    return parsed


def test_effective_spec_records_its_sources() -> None:
    result = resolve_agent(agent(features={"customer_id": "cus_1"}), template(), {"stripe": 11})
    assert result.effective["features"] == {"customer_id": "cus_1", "tier": "standard"}
    assert result.effective["systemPrompt"] == "You are support."
    assert result.effective["modelPolicy"]["profiles"][0]["model"]["name"] == "gpt-4o"
    assert result.effective["mcpServerRefs"] == ["stripe"]
    assert result.resolved_from == {
        "template": {"name": "support", "resourceVersion": "7", "generation": 2},
        "mcpServers": [{"name": "stripe", "resourceVersion": "11"}],
    }


def test_overrides_win() -> None:
    overrides = {
        "systemPrompt": "Be brief.",
        "mcpServerRefs": [],
        "modelPolicy": {
            "profiles": [{"name": "cheap", "model": {"provider": "demo", "name": "echo"}}]
        },
    }  # fmt: skip
    result = resolve_agent(
        agent(features={"customer_id": "c"}, overrides=overrides), template(), {}
    )
    assert result.effective["systemPrompt"] == "Be brief."
    assert result.effective["mcpServerRefs"] == []
    assert result.effective["modelPolicy"]["profiles"][0]["name"] == "cheap"
    assert result.resolved_from["mcpServers"] == []


def test_feature_problems_are_each_named() -> None:
    with pytest.raises(Invalid) as exc:
        resolve_agent(
            agent(features={"max_refund": "ten", "colour": "red"}), template(), {"stripe": 1}
        )
    found = {d["path"]: d["message"] for d in exc.value.details}
    assert found == {
        "spec.features.customer_id": "required by template 'support'",
        "spec.features.max_refund": "must be of type number",
        "spec.features.colour": "not declared by template 'support'",
    }


def test_missing_server_is_reported() -> None:
    with pytest.raises(Invalid) as exc:
        resolve_agent(agent(features={"customer_id": "c"}), template(), {})
    assert exc.value.details == [
        {"path": "spec.templateRef", "message": "MCPServer 'stripe' does not exist"}
    ]
