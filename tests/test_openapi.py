"""The OpenAPI document tells the truth: every answer of a real session's life validates
against it (status, content type, body), and the parameter bounds and patterns it shows are
the ones the gateway enforces."""

from __future__ import annotations

import difflib
import json
import re
import time
from typing import Any

import httpx
import pytest
import schemathesis
from pydantic import TypeAdapter, ValidationError

import samples
from conftest import ROOT, Api
from talon.resources.kinds import SESSION_ID_RE
from talon.resources.meta import DnsLabel

SESSIONS = "/v1/ns/acme/agents/customer-support/sessions"
COMMITTED = ROOT / "tests" / "data" / "openapi.json"


@pytest.fixture
def document(api: Api) -> dict[str, Any]:
    return api.as_token(None).ok("GET", "/v1/openapi.json")


def test_the_served_document_is_the_committed_one(
    document: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    """tests/data/openapi.json is the document the gateway serves, so a change to the API
    shows in review as a diff of it. After changing the API on purpose, regenerate it with
    `./scripts/test tests/test_openapi.py -k committed --update-openapi` and commit it."""
    served = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if request.config.getoption("update_openapi"):
        COMMITTED.write_text(served)
        return
    committed = COMMITTED.read_text() if COMMITTED.exists() else ""
    if served != committed:
        diff = difflib.unified_diff(
            committed.splitlines(), served.splitlines(), str(COMMITTED.name), "served",
            lineterm="", n=2,
        )  # fmt: skip
        shown = list(diff)
        pytest.fail(
            "the served OpenAPI document is not tests/data/openapi.json; if the API changed on "
            "purpose, regenerate it (--update-openapi, see this test) and commit it:\n"
            + "\n".join(shown[:120])
            + (f"\n... {len(shown) - 120} more diff lines" if len(shown) > 120 else "")
        )


class Checked:
    """Sends requests and validates every answer against the document, operation by
    operation (the same checks as the fuzz run)."""

    def __init__(self, api: Api, document: dict[str, Any]) -> None:
        self.api = api
        self.schema = schemathesis.openapi.from_dict(document)
        self.paths = [(p, re.compile(_template_regex(p))) for p in document["paths"]]
        self.seen: set[tuple[str, str, int]] = set()

    def __call__(self, method: str, path: str, expect: int, **kwargs: Any) -> httpx.Response:
        response = self.api.request(method, path, **kwargs)
        assert response.status_code == expect, (method, path, response.text)
        template = next(t for t, regex in self.paths if regex.fullmatch(path.split("?")[0]))
        self.schema[template][method].validate_response(response)
        self.seen.add((method, template, expect))
        return response


def _template_regex(template: str) -> str:
    return re.sub(r"\{\w+\}", "[^/]+", template)


def test_a_real_sessions_answers_match_the_document(
    acme: Api, document: dict[str, Any], start_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    call = Checked(acme, document)
    start_worker(demo_fallback=True)
    call("GET", "/healthz", 200)
    call("GET", "/v1/whoami", 200)
    minted = call("POST", "/v1/tokens", 201, json={"name": "x", "role": "read",
                                                   "namespaces": ["acme"]}).json()  # fmt: skip
    call("GET", "/v1/tokens", 200)
    call("GET", f"/v1/tokens/{minted['id']}", 200)
    call("DELETE", f"/v1/tokens/{minted['id']}", 200)
    items = [samples.mcp_server("acme", "extra"), samples.knowledge("acme", "extra")]
    call("POST", "/v1/apply?dryRun=true", 200, json={"items": items})
    call("POST", "/v1/apply", 200, json={"items": items})
    for plural in ("agents", "agent-templates", "schedules", "knowledge", "mcp-servers",
                   "mcp-bindings"):  # fmt: skip
        listed = call("GET", f"/v1/ns/acme/{plural}", 200).json()["items"]
        call("GET", f"/v1/namespaces/acme/{plural}/{listed[0]['metadata']['name']}", 200)
    call("GET", "/v1/namespaces", 200)
    call("GET", "/v1/namespaces/acme", 200)
    call("PATCH", "/v1/ns/acme/knowledge/extra", 200, json={"spec": {"title": "t"}})
    call("DELETE", "/v1/ns/acme/knowledge/extra", 200)
    # A session's life, with a turn that calls a tool (tool calls and results in messages).
    call("POST", SESSIONS, 201, json={"id": "life", "metadata": {"k": [1, 2.5, None]}})
    call("POST", SESSIONS, 200, json={"id": "life"})
    key = {"Idempotency-Key": "k-1"}
    body = {"content": "Review renewals and run the renewal outreach skill."}
    turn = call("POST", f"{SESSIONS}/life/message", 202, json=body, headers=key).json()
    call("POST", f"{SESSIONS}/life/message", 200, json=body, headers=key)
    stream = call("GET", f"{SESSIONS}/life/stream?untilTurnEnd=true", 200,
                  headers={"Last-Event-ID": "0"})  # fmt: skip
    assert "event: turn.completed" in stream.text
    view = call("GET", f"{SESSIONS}/life", 200).json()
    assert view["activeTurn"] is None
    messages = call("GET", f"{SESSIONS}/life/messages?limit=2", 200).json()["items"]
    assert messages and any(m.get("toolCalls") for m in _all_messages(acme))
    completed = call("GET", f"{SESSIONS}/life/turns/{turn['turnId']}", 200).json()
    assert completed["state"] == "completed" and completed["steps"]
    call("GET", SESSIONS, 200)
    call("GET", f"{SESSIONS}/life/usage?groupBy=turn", 200)
    call("POST", f"{SESSIONS}/life/cancel", 200)
    fired = call("POST", "/v1/ns/acme/schedules/renewal-check/run", 202).json()
    _wait_idle(acme, fired["sessionId"])
    call("GET", "/v1/ns/acme/schedules/renewal-check/fires", 200)
    call("GET", "/v1/ns/acme/schedules/renewal-check/fires?limit=1", 200)
    call("GET", "/v1/ns/acme/agents/customer-support/tools", 200)
    call("GET", "/v1/ns/acme/schedules/renewal-check", 200)
    call("DELETE", f"{SESSIONS}/life", 200)
    call("GET", "/v1/openapi.json", 200)
    # Errors validate too (the Error schema, a documented status).
    call("GET", f"{SESSIONS}/nope", 404)
    call("POST", f"{SESSIONS}/life/message", 400, content=b'{"content": NaN}',
         headers={"Content-Type": "application/json"})  # fmt: skip
    call("GET", "/v1/whoami", 401, headers={"Authorization": "Bearer nope"})
    # Every success body the document describes was met at least once above.
    assert _success_schemas(document, call.seen) == _success_schemas(document, None)


def _success_schemas(document: dict[str, Any], seen: set[tuple[str, str, int]] | None) -> set[str]:
    import json

    found = set()
    for template, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if not status.startswith("2"):
                    continue
                if seen is None or (method.upper(), template, int(status)) in seen:
                    found |= {json.dumps(m["schema"]) for m in answer["content"].values()}
    return found


def _all_messages(api: Api) -> list[dict[str, Any]]:
    return api.ok("GET", f"{SESSIONS}/life/messages")["items"]


def _wait_idle(api: Api, session: str) -> None:
    deadline = time.monotonic() + 20
    while api.ok("GET", f"{SESSIONS}/{session}")["activeTurn"] is not None:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_documented_bounds_are_the_enforced_ones(api: Api, document: dict[str, Any]) -> None:
    """For every integer query parameter and header: one past each documented bound is
    refused, naming it; the bound itself is not refused for being out of range."""
    api.ok("POST", "/v1/apply", json={"items": [samples.namespace("shop")]})
    values = {"ns": "shop", "name": "x", "agent": "x", "session_id": "x",
              "turn_id": "00000000-0000-0000-0000-000000000000", "token_id": "tok_x"}  # fmt: skip
    checked = 0
    for template, operations in document["paths"].items():
        path = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], template)
        for method, operation in operations.items():
            for param in operation.get("parameters", []):
                schema = param["schema"]
                if schema["type"] != "integer" or param["in"] == "path":
                    continue
                for bound, step in (("minimum", -1), ("maximum", 1)):
                    outside = str(schema[bound] + step)
                    answer = _send(api, method, path, param, outside)
                    assert answer.status_code == 400, (template, param["name"], answer.text)
                    assert answer.json()["error"]["details"][0]["path"] == param["name"]
                    inside = _send(api, method, path, param, str(schema[bound]))
                    details = inside.json().get("error", {}).get("details", [])
                    assert param["name"] not in [d["path"] for d in details], inside.text
                    checked += 1
    assert checked >= 20


def _send(api: Api, method: str, path: str, param: dict[str, Any], value: str) -> httpx.Response:
    # A stream that did open must end at once.
    params = {"maxSeconds": 1, "untilTurnEnd": "true"} if path.endswith("/stream") else {}
    if param["in"] == "query":
        return api.request(method.upper(), path, params={**params, param["name"]: value})
    return api.request(method.upper(), path, params=params, headers={param["name"]: value})


def test_path_parameter_patterns_are_what_the_models_accept(document: dict[str, Any]) -> None:
    patterns = {
        p["name"]: re.compile(p["schema"]["pattern"])
        for ops in document["paths"].values()
        for op in ops.values()
        for p in op.get("parameters", [])
        if p["in"] == "path"
    }
    assert set(patterns) == {"ns", "name", "agent", "session_id", "turn_id", "token_id"}
    dns_label = TypeAdapter(DnsLabel)
    for candidate in ("acme", "a", "a-b", "a" * 63, "a" * 64, "-a", "a-", "A", "a_b", "a.b",
                      "é", "a\x00", "", "1", "customer-support"):  # fmt: skip
        try:
            dns_label.validate_python(candidate)
            valid = True
        except ValidationError:
            valid = False
        for name in ("ns", "name", "agent"):
            assert bool(patterns[name].search(candidate)) == valid, (name, candidate)
        session_valid = re.match(SESSION_ID_RE, candidate) is not None
        assert bool(patterns["session_id"].search(candidate)) == session_valid, candidate
    assert patterns["turn_id"].search("5b0c7c7e-1f0e-4a0e-9d1e-0123456789ab")
    assert not patterns["turn_id"].search("5B0C7C7E-1F0E-4A0E-9D1E-0123456789AB")
    for token_id in ("tok_0123456789abcdef", "bootstrap-admin"):
        assert patterns["token_id"].search(token_id)


def test_stream_and_message_routes_are_described(document: dict[str, Any]) -> None:
    stream = document["paths"]["/v1/ns/{ns}/agents/{agent}/sessions/{session_id}/stream"]["get"]
    assert list(stream["responses"]["200"]["content"]) == ["text/event-stream"]
    headers = {p["name"]: p for p in stream["parameters"] if p["in"] == "header"}
    assert "precedence" in headers["Last-Event-ID"]["description"]
    message = document["paths"]["/v1/ns/{ns}/agents/{agent}/sessions/{session_id}/message"]
    key = next(p for p in message["post"]["parameters"] if p["name"] == "Idempotency-Key")
    assert key["in"] == "header" and key["required"] is False and key["schema"]["pattern"]
    assert set(message["post"]["responses"]) >= {"200", "202", "400", "401", "404", "422"}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            successes = [s for s in operation["responses"] if s.startswith("2")]
            assert successes, (method, path)
            for status in successes:
                for media in operation["responses"][status]["content"].values():
                    assert media["schema"], (method, path, status)
