"""Bad requests of every sort get a JSON error naming the problem, never a 500."""

from __future__ import annotations

import pytest

import samples
from conftest import Api


@pytest.fixture
def shop(api: Api) -> Api:
    api.ok("POST", "/v1/namespaces", 201, json=samples.namespace("shop"))
    return api


def error(response) -> dict:  # type: ignore[no-untyped-def]
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    return body["error"]


def test_malformed_json(shop: Api) -> None:
    response = shop.post(
        "/v1/ns/shop/knowledge", content=b'{"kind": ', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    problem = error(response)
    assert problem["code"] == "bad_request"
    assert problem["message"].startswith("malformed JSON")
    assert problem["details"][0]["path"] == "(body)"


def test_nul_characters_are_refused_with_their_path(shop: Api) -> None:
    # PostgreSQL cannot store U+0000; it must be a 400 naming the field, never a 500.
    knowledge = samples.knowledge("shop")
    knowledge["spec"]["content"] = "before\u0000after"
    response = shop.post("/v1/apply", json={"items": [knowledge]})
    assert response.status_code == 400
    assert error(response)["details"] == [
        {"path": "items[0].spec.content", "message": "NUL characters (U+0000) are not accepted"}
    ]
    shop.ok("POST", "/v1/ns/shop/agent-templates", 201, json=samples.template("shop"))
    shop.ok("POST", "/v1/ns/shop/agents", 201, json=samples.agent("shop"))
    shop.ok("POST", "/v1/ns/shop/agents/bot/sessions", 201, json={"id": "s"})
    posted = shop.post("/v1/ns/shop/agents/bot/sessions/s/message", json={"content": "a\u0000"})
    assert posted.status_code == 400 and error(posted)["details"][0]["path"] == "content"
    assert shop.ok("GET", "/v1/ns/shop/agents/bot/sessions/s/messages")["items"] == []


def test_malformed_yaml_and_yaml_aliases(shop: Api) -> None:
    headers = {"Content-Type": "application/yaml"}
    response = shop.post("/v1/ns/shop/knowledge", content=b"a: [1, 2", headers=headers)
    assert response.status_code == 400
    assert error(response)["message"].startswith("malformed YAML")
    bomb = b"a: &a [x, x]\nb: [*a, *a]\n"
    response = shop.post("/v1/ns/shop/knowledge", content=bomb, headers=headers)
    assert response.status_code == 400
    assert "aliases" in error(response)["message"]


def test_yaml_body_is_accepted(shop: Api) -> None:
    text = (
        "apiVersion: talon.dev/v1alpha1\nkind: Knowledge\nmetadata:\n  name: faq\n"
        "spec:\n  content: hello\n"
    )
    response = shop.post(
        "/v1/ns/shop/knowledge", content=text.encode(), headers={"Content-Type": "application/yaml"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["metadata"]["namespace"] == "shop"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_wrong_content_type(shop: Api, content_type: str) -> None:
    response = shop.post(
        "/v1/ns/shop/knowledge", content=b"{}", headers={"Content-Type": content_type}
    )
    assert response.status_code == 415
    assert error(response)["details"][0]["path"] == "Content-Type"


def test_oversize_body(shop: Api) -> None:
    # tests/data/talon-test.yaml sets gateway.maxBodyBytes to 65536.
    big = samples.knowledge("shop", content="x" * 70_000)
    response = shop.post("/v1/ns/shop/knowledge", json=big)
    assert response.status_code == 413
    assert error(response)["code"] == "payload_too_large"
    assert shop.get("/v1/ns/shop/knowledge/faq").status_code == 404


def test_empty_body_and_non_object_bodies(shop: Api) -> None:
    empty = shop.post("/v1/ns/shop/knowledge", headers={"Content-Type": "application/json"})
    assert empty.status_code == 400
    assert error(empty)["details"] == [{"path": "(body)", "message": "required"}]
    for body in ([1, 2], "text", 42):
        response = shop.post("/v1/ns/shop/knowledge", json=body)
        assert response.status_code == 422, body
        assert error(response)["details"][0]["path"] == "(root)"
    patch = shop.patch("/v1/namespaces/shop", json=[{"op": "add"}])
    assert patch.status_code == 422


def test_invalid_fields_are_all_named(shop: Api) -> None:
    body = samples.schedule("shop", name="Bad_Name")
    body["spec"]["cron"] = "every day"
    body["spec"]["colour"] = "red"
    response = shop.post("/v1/ns/shop/schedules", json=body)
    assert response.status_code == 422
    problem = error(response)
    assert problem["code"] == "invalid"
    paths = {d["path"] for d in problem["details"]}
    assert {"metadata.name", "spec.cron", "spec.colour"} <= paths


def test_server_owned_fields_cannot_be_patched_away(shop: Api) -> None:
    renamed = shop.patch("/v1/namespaces/shop", json={"metadata": {"name": "other"}})
    assert renamed.status_code == 422
    assert error(renamed)["details"][0]["path"] == "metadata.name"


def test_unknown_route_and_wrong_method(api: Api) -> None:
    missing = api.get("/v1/widgets")
    assert missing.status_code == 404
    assert error(missing)["message"] == "no route for GET /v1/widgets"
    wrong = api.request("PUT", "/v1/apply")
    assert wrong.status_code == 405
    assert wrong.headers["Allow"] == "POST"
    assert error(wrong)["code"] == "method_not_allowed"


def test_request_id_is_echoed_or_generated(api: Api) -> None:
    mine = api.get("/v1/namespaces", headers={"X-Request-Id": "req-123"})
    assert mine.headers["X-Request-Id"] == "req-123"
    generated = api.get("/v1/namespaces", headers={"X-Request-Id": "bad id with spaces"})
    assert generated.headers["X-Request-Id"] != "bad id with spaces"
    assert len(generated.headers["X-Request-Id"]) == 32


def test_openapi_describes_every_route(api: Api) -> None:
    from talon import entrypoints

    document = api.as_token(None).ok("GET", "/v1/openapi.json")
    assert document["openapi"].startswith("3.")
    for route in entrypoints.gateway().routes:
        operation = document["paths"][route.openapi_path][route.method.lower()]
        assert operation["summary"], route.endpoint
        if route.request_schema:
            ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.split("/")[-1] in document["components"]["schemas"]
    schemas = document["components"]["schemas"]
    assert {"Agent", "AgentTemplate", "Schedule", "MCPBinding", "Error"} <= set(schemas)
    assert "/v1/ns/{ns}/agents" in document["paths"]
    assert "/v1/namespaces/{ns}/mcp-bindings" in document["paths"]
