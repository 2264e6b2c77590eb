"""Gateway CRUD, apply, pagination, label filters, optimistic concurrency and dependencies."""

from __future__ import annotations

import pytest
import yaml

import samples
from conftest import Api

NS = "team"


@pytest.fixture
def team(api: Api) -> Api:
    api.ok("POST", "/v1/namespaces", 201, json=samples.namespace(NS))
    for item in samples.full_set(NS):
        plural = {v[0]: k for k, v in samples.NAMESPACED.items()}[item["kind"]]
        api.ok("POST", f"/v1/ns/{NS}/{plural}", 201, json=item)
    return api


def test_healthz_needs_no_token(gateway_url: str) -> None:
    response = Api(gateway_url, None).get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize("plural", list(samples.NAMESPACED))
def test_get_list_patch_replace(team: Api, plural: str) -> None:
    kind, field, change = samples.NAMESPACED[plural]
    listing = team.ok("GET", f"/v1/ns/{NS}/{plural}")
    assert listing["kind"] == f"{kind}List"
    assert len(listing["items"]) == 1
    item = listing["items"][0]
    name = item["metadata"]["name"]
    assert item["kind"] == kind and item["metadata"]["namespace"] == NS
    assert team.ok("GET", f"/v1/ns/{NS}/{plural}/{name}") == item

    patched = team.ok("PATCH", f"/v1/ns/{NS}/{plural}/{name}", json=change)
    key, value = next(iter(next(iter(change.values())).items()))
    assert patched[field][key] == value
    assert int(patched["metadata"]["resourceVersion"]) > int(item["metadata"]["resourceVersion"])
    assert patched["metadata"]["generation"] == item["metadata"]["generation"] + 1
    assert patched["metadata"]["uid"] == item["metadata"]["uid"]

    # PUT with the version we read first is stale now.
    stale = team.put(f"/v1/ns/{NS}/{plural}/{name}", json=item)
    assert stale.status_code == 409
    assert stale.json()["error"]["details"] == [
        {"path": "metadata.resourceVersion", "message": "stale"}
    ]
    # A GET -> edit -> PUT round trip (server fields included) succeeds.
    replaced = team.ok("PUT", f"/v1/ns/{NS}/{plural}/{name}", json=patched)
    assert replaced["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]


def test_namespaces_crud(api: Api) -> None:
    created = api.ok("POST", "/v1/namespaces", 201, json=samples.namespace("blue"))
    assert created["metadata"]["resourceVersion"]
    assert api.ok("GET", "/v1/namespaces/blue")["spec"]["description"] == "blue team"
    names = [n["metadata"]["name"] for n in api.ok("GET", "/v1/namespaces")["items"]]
    assert names == ["blue"]
    patched = api.ok("PATCH", "/v1/namespaces/blue", json={"metadata": {"labels": {"t": "x"}}})
    assert patched["metadata"]["labels"] == {"t": "x"}
    assert api.post("/v1/namespaces", json=samples.namespace("blue")).status_code == 409
    api.ok("DELETE", "/v1/namespaces/blue")
    assert api.get("/v1/namespaces/blue").status_code == 404


def test_both_route_prefixes_are_the_same_resources(team: Api) -> None:
    body = samples.binding(NS, name="via-namespaces")
    created = team.ok("POST", f"/v1/namespaces/{NS}/mcp-bindings", 201, json=body)
    same = team.ok("GET", f"/v1/ns/{NS}/mcp-bindings/via-namespaces")
    assert same == created
    team.ok("DELETE", f"/v1/namespaces/{NS}/mcp-bindings/via-namespaces")
    assert team.get(f"/v1/ns/{NS}/mcp-bindings/via-namespaces").status_code == 404


def test_compact_seed_shape_on_typed_route(team: Api) -> None:
    body = {
        "name": "renewal-check",
        "ns": NS,
        "spec": samples.schedule(NS)["spec"],
    }
    created = team.ok("POST", f"/v1/ns/{NS}/schedules", 201, json=body)
    assert created["apiVersion"] == "talon.dev/v1alpha1"
    assert created["metadata"]["name"] == "renewal-check"


def test_pagination_walks_every_item_once(team: Api) -> None:
    for i in range(7):
        team.ok("POST", f"/v1/ns/{NS}/knowledge", 201, json=samples.knowledge(NS, f"doc-{i}"))
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        params = {"limit": 3, **({"pageToken": token} if token else {})}
        page = team.ok("GET", f"/v1/ns/{NS}/knowledge", params=params)
        pages += 1
        seen += [i["metadata"]["name"] for i in page["items"]]
        token = page["nextPageToken"]
        if not token:
            break
    assert seen == sorted(seen) == sorted(["faq", *[f"doc-{i}" for i in range(7)]])
    assert pages == 3


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": 100000}, "limit"),
        ({"pageToken": "not-a-token"}, "pageToken"),
        ({"labelSelector": "a=b=c"}, "labelSelector"),
    ],
)
def test_bad_list_parameters(team: Api, params: dict, field: str) -> None:
    response = team.get(f"/v1/ns/{NS}/knowledge", params=params)
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["path"] == field


def test_label_selector(team: Api) -> None:
    team.ok("POST", f"/v1/ns/{NS}/agents", 201, json=samples.agent(NS, "gold", tier="gold"))
    team.ok("POST", f"/v1/ns/{NS}/agents", 201, json=samples.agent(NS, "free", tier="free"))

    def names(selector: str) -> list[str]:
        page = team.ok("GET", f"/v1/ns/{NS}/agents", params={"labelSelector": selector})
        return [i["metadata"]["name"] for i in page["items"]]

    assert names("tier=gold") == ["gold"]
    assert names("tier!=gold") == ["bot", "free"]
    assert names("tier") == ["free", "gold"]
    assert names("!tier") == ["bot"]
    assert names("tier=gold,tier=free") == []


def test_create_conflicts_and_not_found(team: Api) -> None:
    duplicate = team.post(f"/v1/ns/{NS}/agents", json=samples.agent(NS))
    assert duplicate.status_code == 409
    assert team.get(f"/v1/ns/{NS}/agents/nobody").status_code == 404
    missing_ns = team.get("/v1/ns/nowhere/agents")
    assert missing_ns.status_code == 404
    assert missing_ns.json()["error"]["message"] == "namespace 'nowhere' not found"
    put_missing = team.put(f"/v1/ns/{NS}/agents/ghost", json=samples.agent(NS, "ghost"))
    assert put_missing.status_code == 404


def test_url_and_body_must_agree(team: Api) -> None:
    body = samples.agent(NS, "other-name")
    response = team.put(f"/v1/ns/{NS}/agents/bot", json=body)
    assert response.status_code in (400, 422)
    assert response.json()["error"]["details"][0]["path"] == "metadata.name"
    wrong_ns = team.post(f"/v1/ns/{NS}/agents", json=samples.agent("elsewhere", "x"))
    assert wrong_ns.status_code == 422
    assert wrong_ns.json()["error"]["details"][0]["path"] == "metadata.namespace"


@pytest.mark.parametrize(
    ("plural", "body", "path"),
    [
        ("agents", samples.agent(NS, "x", template_ref="missing"), "spec.templateRef"),
        ("mcp-bindings", samples.binding(NS, "x", server="missing"), "spec.server"),
        ("schedules", samples.schedule(NS, "x", agent_name="missing"), "spec.target.agent"),
        ("agent-templates", samples.template(NS, "x", servers=["missing"]),
         "definition.mcpServerRefs[0]"),
    ],
)  # fmt: skip
def test_references_must_exist(team: Api, plural: str, body: dict, path: str) -> None:
    response = team.post(f"/v1/ns/{NS}/{plural}", json=body)
    assert response.status_code == 422, response.text
    assert path in [d["path"] for d in response.json()["error"]["details"]]


def test_agent_features_are_checked_against_the_template(team: Api) -> None:
    body = samples.agent(NS, "x")
    body["spec"]["features"] = {"colour": "red"}
    response = team.post(f"/v1/ns/{NS}/agents", json=body)
    assert response.status_code == 422
    paths = {d["path"] for d in response.json()["error"]["details"]}
    assert paths == {"spec.features.customer_id", "spec.features.colour"}


def test_agent_status_records_effective_spec_and_sources(team: Api) -> None:
    agent = team.ok("GET", f"/v1/ns/{NS}/agents/bot")
    template = team.ok("GET", f"/v1/ns/{NS}/agent-templates/support")
    server = team.ok("GET", f"/v1/ns/{NS}/mcp-servers/tools")
    status = agent["status"]
    assert status["phase"] == "Resolved"
    assert status["effective"]["systemPrompt"] == "Hi"
    assert status["effective"]["features"] == {"customer_id": "cus_1"}
    assert (
        status["resolvedFrom"]["template"]["resourceVersion"]
        == (template["metadata"]["resourceVersion"])
    )
    assert status["resolvedFrom"]["mcpServers"] == [
        {"name": "tools", "resourceVersion": server["metadata"]["resourceVersion"]}
    ]


def test_template_change_re_resolves_dependent_agents(team: Api) -> None:
    template = team.ok(
        "PATCH", f"/v1/ns/{NS}/agent-templates/support",
        json={"definition": {"systemPrompt": "Version two"}},
    )  # fmt: skip
    status = team.ok("GET", f"/v1/ns/{NS}/agents/bot")["status"]
    assert status["effective"]["systemPrompt"] == "Version two"
    assert (
        status["resolvedFrom"]["template"]["resourceVersion"]
        == (template["metadata"]["resourceVersion"])
    )
    server = team.ok(
        "PATCH", f"/v1/ns/{NS}/mcp-servers/tools", json={"spec": {"timeoutSeconds": 5}}
    )
    status = team.ok("GET", f"/v1/ns/{NS}/agents/bot")["status"]
    assert (
        status["resolvedFrom"]["mcpServers"][0]["resourceVersion"]
        == (server["metadata"]["resourceVersion"])
    )


def test_template_change_that_breaks_an_agent_marks_it_failed(team: Api) -> None:
    definition = team.ok("GET", f"/v1/ns/{NS}/agent-templates/support")["definition"]
    definition["customSpec"]["features"].append({"name": "region", "required": True})
    team.ok("PATCH", f"/v1/ns/{NS}/agent-templates/support", json={"definition": definition})
    status = team.ok("GET", f"/v1/ns/{NS}/agents/bot")["status"]
    assert status["phase"] == "Failed"
    assert "spec.features.region" in status["message"]
    # Fixing the agent resolves it again.
    fixed = team.ok(
        "PATCH", f"/v1/ns/{NS}/agents/bot",
        json={"spec": {"features": {"customer_id": "c", "region": "eu"}}},
    )  # fmt: skip
    assert fixed["status"]["phase"] == "Resolved"


@pytest.mark.parametrize(
    ("path", "blockers"),
    [
        (f"/v1/ns/{NS}/agent-templates/support", {"Agent/bot"}),
        (f"/v1/ns/{NS}/mcp-servers/tools",
         {"AgentTemplate/support", "Agent/bot", "MCPBinding/bind"}),
        # A binding names agents as policy subjects (like RBAC subjects), not as a dependency.
        (f"/v1/ns/{NS}/agents/bot", {"Schedule/wake"}),
        (f"/v1/namespaces/{NS}", {"Agent/bot", "AgentTemplate/support", "Knowledge/faq",
                                  "MCPBinding/bind", "MCPServer/tools", "Schedule/wake"}),
    ],
)  # fmt: skip
def test_delete_in_use_answers_409_naming_dependents(
    team: Api, path: str, blockers: set[str]
) -> None:
    response = team.delete(path)
    assert response.status_code == 409
    error = response.json()["error"]
    assert {d["path"] for d in error["details"]} == blockers
    for blocker in blockers:
        assert blocker in error["message"]
    assert team.get(path).status_code == 200


def test_delete_in_dependency_order_succeeds(team: Api) -> None:
    for plural, name in [
        ("schedules", "wake"),
        ("agents", "bot"),
        ("mcp-bindings", "bind"),
        ("agent-templates", "support"),
        ("mcp-servers", "tools"),
        ("knowledge", "faq"),
    ]:
        deleted = team.ok("DELETE", f"/v1/ns/{NS}/{plural}/{name}")
        assert deleted["metadata"]["name"] == name
    team.ok("DELETE", f"/v1/namespaces/{NS}")
    assert team.ok("GET", "/v1/namespaces")["items"] == []


# --- apply -----------------------------------------------------------------------------------


def _apply(api: Api, items: list[dict], **params: str) -> dict:
    return api.ok("POST", "/v1/apply", json={"items": items}, params=params)


def test_apply_orders_by_dependency_and_is_idempotent(api: Api) -> None:
    items = [samples.namespace("shop"), *samples.full_set("shop")]
    first = _apply(api, list(reversed(items)))
    assert {i["action"] for i in first["items"]} == {"created"}
    # Results come back in the order given.
    assert [i["kind"] for i in first["items"]] == [i["kind"] for i in reversed(items)]
    second = _apply(api, items)
    assert {i["action"] for i in second["items"]} == {"unchanged"}
    items[2]["spec"]["content"] = "# FAQ v2"  # the Knowledge document
    third = _apply(api, items)
    actions = {(i["kind"], i["action"]) for i in third["items"]}
    assert ("Knowledge", "configured") in actions
    assert ("Agent", "unchanged") in actions


def test_apply_dry_run_changes_nothing(api: Api) -> None:
    result = _apply(api, [samples.namespace("shop"), *samples.full_set("shop")], dryRun="true")
    assert result["dryRun"] is True
    assert {i["action"] for i in result["items"]} == {"created"}
    assert api.ok("GET", "/v1/namespaces")["items"] == []


def test_apply_is_all_or_nothing(api: Api) -> None:
    items = [samples.namespace("shop"), *samples.full_set("shop")]
    items[4]["spec"]["templateRef"] = "missing"  # the agent
    response = api.post("/v1/apply", json={"items": items})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["path"] == "items[4].spec.templateRef"
    assert api.ok("GET", "/v1/namespaces")["items"] == []


def test_apply_reports_every_invalid_document(api: Api) -> None:
    bad_schedule = samples.schedule("shop")
    bad_schedule["spec"]["cron"] = "nope"
    items = [samples.namespace("shop"), {"kind": "Widget"}, bad_schedule]
    response = api.post("/v1/apply", json={"items": items})
    assert response.status_code == 422
    paths = [d["path"] for d in response.json()["error"]["details"]]
    assert paths == ["items[1].kind", "items[2].spec.cron"]


def test_apply_rejects_duplicates_and_empty_batches(api: Api) -> None:
    twice = [samples.namespace("shop"), samples.namespace("shop")]
    response = api.post("/v1/apply", json={"items": twice})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["path"] == "items[1].metadata.name"
    assert api.post("/v1/apply", json={"items": []}).status_code == 422


def test_apply_takes_multi_document_yaml(api: Api) -> None:
    text = yaml.safe_dump_all([samples.namespace("shop"), *samples.full_set("shop")])
    response = api.post(
        "/v1/apply", content=text.encode(), headers={"Content-Type": "application/yaml"}
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) == 7
    assert api.ok("GET", "/v1/ns/shop/agents")["items"][0]["status"]["phase"] == "Resolved"


def test_apply_with_stale_resource_version_conflicts(api: Api) -> None:
    _apply(api, [samples.namespace("shop")])
    current = api.ok("GET", "/v1/namespaces/shop")
    api.ok("PATCH", "/v1/namespaces/shop", json={"spec": {"description": "changed"}})
    current["spec"]["description"] = "mine"
    response = api.post("/v1/apply", json={"items": [current]})
    assert response.status_code == 409
