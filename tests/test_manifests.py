"""Manifest validation: shapes from the seed parse, bad input names the field and reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from talon.cli.manifest_files import read_documents
from talon.errors import Invalid
from talon.resources.kinds import Agent, AgentTemplate
from talon.resources.registry import BY_NAME, KINDS, kind_for_alias, parse_manifest
from talon.resources.schedule_kind import Schedule

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parents[1]
V = "talon.dev/v1alpha1"


def paths(exc: pytest.ExceptionInfo[Invalid]) -> dict[str, str]:
    return {d["path"]: d["message"] for d in exc.value.details}


def schedule(**spec: Any) -> dict[str, Any]:
    base = {
        "kind": "cron",
        "cron": "0 14 * * 1-5",
        "timezone": "America/Los_Angeles",
        "target": {"agent": "customer-support", "sessionId": "enterprise-renewals"},
        "inputMessage": "Review renewals.",
    }
    base.update(spec)
    return {"apiVersion": V, "kind": "Schedule", "metadata": {"name": "s", "namespace": "acme"},
            "spec": base}  # fmt: skip


def test_every_example_manifest_parses() -> None:
    kinds = []
    for document in read_documents([str(ROOT / "manifests")]):
        kinds.append(parse_manifest(document.body).kind)
    assert sorted(set(kinds)) == sorted(k.name for k in KINDS)


def test_seed_template_shape() -> None:
    docs = read_documents([str(ROOT / "manifests" / "30-customer-support.yaml")])
    template = parse_manifest(docs[0].body)
    assert isinstance(template, AgentTemplate)
    feature = template.definition.customSpec.features[0]
    assert (feature.name, feature.type, feature.required) == ("customer_id", "string", True)
    profile = template.definition.modelPolicy.profiles[0]
    assert (profile.name, profile.model.provider, profile.model.name) == (
        "primary",
        "openai",
        "gpt-4o",
    )
    assert profile.model.temperature == 0.2
    assert template.definition.mcpServerRefs == ["stripe-readonly", "hubspot-readonly"]


def test_compact_seed_schedule_shape_on_typed_route() -> None:
    compact = {"name": "renewal-check", "ns": "acme", "spec": schedule()["spec"]}
    parsed = parse_manifest(compact, expected_kind=BY_NAME["Schedule"], namespace="acme")
    assert isinstance(parsed, Schedule)
    assert parsed.metadata.namespace == "acme"
    assert parsed.spec.target.sessionMode == "named"


def test_unknown_field_is_rejected_with_its_path() -> None:
    doc = schedule(retries=3)
    with pytest.raises(Invalid) as exc:
        parse_manifest(doc)
    assert paths(exc) == {"spec.retries": "unknown field"}


def test_unknown_kind_and_api_version() -> None:
    with pytest.raises(Invalid) as exc:
        parse_manifest({"apiVersion": V, "kind": "Widget", "metadata": {"name": "w"}})
    assert "kind" in paths(exc)
    doc = schedule()
    doc["apiVersion"] = "talon.dev/v2"
    with pytest.raises(Invalid) as exc:
        parse_manifest(doc)
    assert "apiVersion" in paths(exc)


@pytest.mark.parametrize(
    "name", ["Upper", "under_score", "-lead", "trail-", "a" * 64, "", "dot.ted"]
)
def test_names_must_be_dns_labels(name: str) -> None:
    doc = schedule()
    doc["metadata"]["name"] = name
    with pytest.raises(Invalid) as exc:
        parse_manifest(doc)
    assert "metadata.name" in paths(exc)


@pytest.mark.parametrize(
    ("spec", "path", "reason"),
    [
        ({"cron": "61 * * * *"}, "spec.cron", "not a valid cron"),
        ({"cron": "* * * *"}, "spec.cron", "5 fields"),
        ({"timezone": "Mars/Olympus"}, "spec.timezone", "IANA"),
        ({"inputMessage": "   "}, "spec.inputMessage", "blank"),
        ({"kind": "once"}, "spec", "needs 'at'"),
        ({"target": {"agent": "a", "sessionMode": "named"}}, "spec.target", "needs sessionId"),
        (
            {"target": {"agent": "a", "sessionMode": "new", "sessionId": "x"}},
            "spec.target",
            "no sessionId",
        ),
        ({"enabled": "sometimes"}, "spec.enabled", "boolean"),
        ({"missedFirePolicy": "all"}, "spec.missedFirePolicy", "fireOnce"),
    ],
)
def test_schedule_validation(spec: dict[str, Any], path: str, reason: str) -> None:
    with pytest.raises(Invalid) as exc:
        parse_manifest(schedule(**spec))
    found = paths(exc)
    assert path in found, found
    assert reason in found[path]


def test_once_schedule_takes_an_instant() -> None:
    parsed = parse_manifest(schedule(kind="once", cron=None, at="2026-12-01T09:00:00Z"))
    assert isinstance(parsed, Schedule)
    assert parsed.spec.at is not None and parsed.spec.at.year == 2026


def template(**definition: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "modelPolicy": {"profiles": [{"name": "p", "model": {"provider": "demo", "name": "echo"}}]}
    }
    base.update(definition)
    return {"apiVersion": V, "kind": "AgentTemplate", "metadata": {"name": "t", "namespace": "n"},
            "definition": base}  # fmt: skip


@pytest.mark.parametrize(
    ("definition", "path"),
    [
        ({"modelPolicy": {"profiles": []}}, "definition.modelPolicy.profiles"),
        ({"modelPolicy": {"profiles": [{"name": "p", "model": {"provider": "x", "name": "m"}}]}},
         "definition.modelPolicy.profiles[0].model.provider"),
        ({"modelPolicy": {"profiles": [{"name": "p", "model": {"provider": "openai", "name": "m",
          "temperature": 3}}]}}, "definition.modelPolicy.profiles[0].model.temperature"),
        ({"modelPolicy": {"profiles": [{"name": "p", "model": {"provider": "openai", "name": "m",
          "apiKeyFrom": {"env": "A", "secret": "projects/p/secrets/s"}}}]}},
         "definition.modelPolicy.profiles[0].model.apiKeyFrom"),
        ({"customSpec": {"features": [{"name": "x", "type": "integer", "default": "1"}]}},
         "definition.customSpec.features[0]"),
        ({"customSpec": {"features": [{"name": "x"}, {"name": "x"}]}},
         "definition.customSpec.features"),
        ({"mcpServerRefs": ["Not_A_Label"]}, "definition.mcpServerRefs[0]"),
    ],
)  # fmt: skip
def test_template_validation(definition: dict[str, Any], path: str) -> None:
    with pytest.raises(Invalid) as exc:
        parse_manifest(template(**definition))
    assert path in paths(exc), paths(exc)


def test_route_namespace_must_match_the_manifest() -> None:
    with pytest.raises(Invalid) as exc:
        parse_manifest(schedule(), expected_kind=BY_NAME["Schedule"], namespace="other")
    assert "metadata.namespace" in paths(exc)


def test_typed_route_rejects_another_kind() -> None:
    with pytest.raises(Invalid) as exc:
        parse_manifest(schedule(), expected_kind=BY_NAME["Agent"], namespace="acme")
    assert paths(exc) == {"kind": "must be Agent"}


def test_namespaced_kind_needs_a_namespace_and_namespace_takes_none() -> None:
    doc = schedule()
    del doc["metadata"]["namespace"]
    with pytest.raises(Invalid) as exc:
        parse_manifest(doc)
    assert "metadata.namespace" in paths(exc)
    with pytest.raises(Invalid) as exc:
        parse_manifest(
            {"apiVersion": V, "kind": "Namespace", "metadata": {"name": "a", "namespace": "b"}}
        )
    assert "metadata.namespace" in paths(exc)


@pytest.mark.parametrize(
    ("labels", "bad"),
    [({"-bad": "x"}, "metadata.labels"), ({"ok": "no spaces"}, "metadata.labels")],
)
def test_label_syntax(labels: dict[str, str], bad: str) -> None:
    doc = schedule()
    doc["metadata"]["labels"] = labels
    with pytest.raises(Invalid) as exc:
        parse_manifest(doc)
    assert any(p.startswith(bad) for p in paths(exc)), paths(exc)


def test_knowledge_size_limit() -> None:
    doc = {"apiVersion": V, "kind": "Knowledge", "metadata": {"name": "k", "namespace": "n"},
           "spec": {"content": "x" * (512 * 1024 + 1)}}  # fmt: skip
    with pytest.raises(Invalid) as exc:
        parse_manifest(doc)
    assert "limit" in paths(exc)["spec.content"]


def test_binding_needs_subjects_and_mcp_server_needs_http_url() -> None:
    binding = {"apiVersion": V, "kind": "MCPBinding", "metadata": {"name": "b", "namespace": "n"},
               "spec": {"server": "s", "agents": {}}}  # fmt: skip
    with pytest.raises(Invalid) as exc:
        parse_manifest(binding)
    assert "spec.agents" in paths(exc)
    server = {"apiVersion": V, "kind": "MCPServer", "metadata": {"name": "s", "namespace": "n"},
              "spec": {"url": "ftp://example.com"}}  # fmt: skip
    with pytest.raises(Invalid) as exc:
        parse_manifest(server)
    assert "spec.url" in paths(exc)


def test_agent_feature_values_are_scalars() -> None:
    doc = {"apiVersion": V, "kind": "Agent", "metadata": {"name": "a", "namespace": "n"},
           "spec": {"templateRef": "t", "features": {"customer_id": {"nested": 1}}}}  # fmt: skip
    with pytest.raises(Invalid) as exc:
        parse_manifest(doc)
    assert any(p.startswith("spec.features.customer_id") for p in paths(exc)), paths(exc)
    ok = parse_manifest({**doc, "spec": {"templateRef": "t", "features": {"customer_id": "c"}}})
    assert isinstance(ok, Agent)


def test_cli_aliases() -> None:
    assert kind_for_alias("agents") is BY_NAME["Agent"]
    assert kind_for_alias("Agent") is BY_NAME["Agent"]
    assert kind_for_alias("templates") is BY_NAME["AgentTemplate"]
    assert kind_for_alias("mcp-bindings") is BY_NAME["MCPBinding"]
    assert kind_for_alias("ns") is BY_NAME["Namespace"]
    assert kind_for_alias("widgets") is None
