"""Bearer tokens: roles, scopes, expiry, revocation, hashing, and namespace isolation."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

import samples
from conftest import ADMIN_TOKEN, Api, raw_connection
from talon.api.app import Gateway
from talon.auth.tokens import hash_secret
from talon.config import Settings
from talon.errors import Unauthenticated
from talon.services import Services

A, B = "alpha", "bravo"


@pytest.fixture
def two(api: Api) -> Api:
    """Namespaces alpha and bravo, each with one of every kind."""
    for ns in (A, B):
        api.ok("POST", "/v1/apply", json={"items": [samples.namespace(ns), *samples.full_set(ns)]})
    return api


def test_missing_malformed_and_unknown_tokens(gateway_url: str) -> None:
    anonymous = Api(gateway_url, None)
    response = anonymous.get("/v1/namespaces")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "unauthenticated"
    basic = anonymous.get("/v1/namespaces", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status_code == 401
    assert Api(gateway_url, "tln_not-a-real-token").get("/v1/namespaces").status_code == 401


def test_token_secret_is_shown_once_and_stored_hashed(api: Api, database_url: str) -> None:
    created = api.ok("POST", "/v1/tokens", 201, json={"name": "ci", "role": "read",
                                                      "namespaces": ["*"]})  # fmt: skip
    secret = created["token"]
    assert secret.startswith("tln_") and len(secret) > 40
    listed = api.ok("GET", "/v1/tokens")["items"]
    assert {t["id"] for t in listed} == {"bootstrap-admin", created["id"]}
    assert all("token" not in t for t in listed)
    assert "token" not in api.ok("GET", f"/v1/tokens/{created['id']}")
    connection = raw_connection(database_url)
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT secret_hash::text FROM api_tokens")
        stored = " ".join(row[0] for row in cursor.fetchall())
    finally:
        connection.close()
    assert secret not in stored and ADMIN_TOKEN not in stored
    whoami = api.as_token(secret).ok("GET", "/v1/whoami")
    assert whoami == {"tokenId": created["id"], "name": "ci", "role": "read", "namespaces": ["*"],
                      "tools": None}  # fmt: skip


def test_revoked_and_expired_tokens_are_refused(api: Api, database_url: str) -> None:
    token = api.ok("POST", "/v1/tokens", 201, json={"name": "x", "role": "read",
                                                    "namespaces": ["*"]})  # fmt: skip
    user = api.as_token(token["token"])
    assert user.get("/v1/namespaces").status_code == 200
    revoked = api.ok("DELETE", f"/v1/tokens/{token['id']}")
    assert revoked["revokedAt"] is not None
    assert user.get("/v1/namespaces").status_code == 401

    body = {"name": "y", "role": "read", "namespaces": ["*"], "ttlSeconds": 60}
    soon = api.ok("POST", "/v1/tokens", 201, json=body)
    assert soon["expiresAt"] is not None
    # Expiry is honoured by cached tokens too: one that expires in 1.5 s, used (so cached),
    # then used again after its time.
    expires = datetime.now(UTC) + timedelta(seconds=1.5)
    body = {"name": "z", "role": "read", "namespaces": ["*"], "expiresAt": expires.isoformat()}
    brief = api.as_token(api.ok("POST", "/v1/tokens", 201, json=body)["token"])
    assert brief.get("/v1/namespaces").status_code == 200
    assert brief.get("/v1/namespaces").status_code == 200
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.1)
    assert brief.get("/v1/namespaces").status_code == 401


def test_a_revocation_reaches_other_processes_caches(api: Api, settings: Settings) -> None:
    """Two more processes' worth of services on the same database: a token each has cached
    stops working everywhere once one of them revokes it."""
    token = api.ok("POST", "/v1/tokens", 201, json={"name": "x", "role": "read",
                                                    "namespaces": ["*"]})  # fmt: skip
    first, second = Services.start(settings), Services.start(settings)
    try:
        for services in (first, second):
            assert services.tokens.authenticate(token["token"]).token_id == token["id"]
            assert services.tokens.cache.get(hash_secret(token["token"])) is not None
        admin = first.tokens.authenticate(ADMIN_TOKEN)
        first.tokens.revoke(admin, token["id"])
        with pytest.raises(Unauthenticated):
            first.tokens.authenticate(token["token"])
        deadline = time.monotonic() + 5
        while second.tokens.cache.get(hash_secret(token["token"])) is not None:
            assert time.monotonic() < deadline, "the revocation never reached the other cache"
            time.sleep(0.01)
        with pytest.raises(Unauthenticated):
            second.tokens.authenticate(token["token"])
        assert api.as_token(token["token"]).get("/v1/namespaces").status_code == 401
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"name": "x", "role": "root", "namespaces": ["*"]}, "role"),
        ({"name": "x", "role": "read", "namespaces": []}, "namespaces"),
        ({"name": "x", "role": "read", "namespaces": ["*", "a"]}, "(root)"),
        ({"name": "x", "role": "read", "namespaces": ["Bad_NS"]}, "namespaces[0]"),
        ({"name": "", "role": "read", "namespaces": ["*"]}, "name"),
        ({"name": "x", "role": "read", "namespaces": ["*"], "ttlSeconds": 1}, "ttlSeconds"),
        ({"name": "x", "role": "read", "namespaces": ["*"],
          "expiresAt": (datetime.now(UTC) - timedelta(days=1)).isoformat()}, "(root)"),
        ({"name": "x", "role": "read", "namespaces": ["*"], "colour": "red"}, "colour"),
    ],
)  # fmt: skip
def test_bad_token_requests(api: Api, body: dict, path: str) -> None:
    response = api.post("/v1/tokens", json=body)
    assert response.status_code == 422
    assert path in [d["path"] for d in response.json()["error"]["details"]]


def test_roles(two: Api) -> None:
    reader = two.as_token(two.token("read"))
    writer = two.as_token(two.token("write"))
    assert reader.get(f"/v1/ns/{A}/agents").status_code == 200
    denied = reader.post(f"/v1/ns/{A}/knowledge", json=samples.knowledge(A, "new"))
    assert denied.status_code == 403
    assert (
        denied.json()["error"]["message"] == "this route needs the write role; the token has read"
    )
    assert reader.post("/v1/apply", json={"items": [samples.knowledge(A, "n")]}).status_code == 403
    assert writer.post(f"/v1/ns/{A}/knowledge", json=samples.knowledge(A, "new")).status_code == 201
    # Namespaces and tokens are admin business.
    assert writer.post("/v1/namespaces", json=samples.namespace("c")).status_code == 403
    assert writer.delete(f"/v1/namespaces/{A}").status_code == 403
    applied = writer.post("/v1/apply", json={"items": [samples.namespace("c")]})
    assert applied.status_code == 403
    assert writer.get("/v1/tokens").status_code == 403
    body = {"name": "x", "role": "read", "namespaces": ["*"]}
    assert writer.post("/v1/tokens", json=body).status_code == 403


def test_scoped_admin_mints_only_within_its_scope(two: Api) -> None:
    scoped = two.as_token(two.token("admin", [A]))
    ok = scoped.post("/v1/tokens", json={"name": "a-reader", "role": "read", "namespaces": [A]})
    assert ok.status_code == 201
    for namespaces in (["*"], [B], [A, B]):
        refused = scoped.post("/v1/tokens", json={"name": "x", "role": "read",
                                                  "namespaces": namespaces})  # fmt: skip
        assert refused.status_code == 403, namespaces
    # It sees and revokes only the tokens within its scope (itself and what it minted here).
    listed = {t["id"] for t in scoped.ok("GET", "/v1/tokens")["items"]}
    assert listed == {ok.json()["id"], scoped.ok("GET", "/v1/whoami")["tokenId"]}
    assert scoped.get("/v1/tokens/bootstrap-admin").status_code == 404
    assert scoped.delete("/v1/tokens/bootstrap-admin").status_code == 404
    # A write token cannot mint an admin token even for its own namespace.
    writer = two.as_token(two.token("write", [A]))
    body = {"name": "x", "role": "admin", "namespaces": [A]}
    assert writer.post("/v1/tokens", json=body).status_code == 403


SAMPLE_NAMES = {"mcp-servers": "tools", "knowledge": "faq", "agent-templates": "support",
                "agents": "bot", "mcp-bindings": "bind", "schedules": "wake"}  # fmt: skip
SAMPLE_BODIES = {
    "mcp-servers": samples.mcp_server, "knowledge": samples.knowledge,
    "agent-templates": samples.template, "agents": samples.agent,
    "mcp-bindings": samples.binding, "schedules": samples.schedule,
}  # fmt: skip


def _isolation_requests(gateway: Gateway, ns: str) -> list[tuple[str, str, dict | None]]:
    """Every route that names a namespace, filled in for `ns`, with a valid body."""
    requests = []
    for route in gateway.routes:
        if "<ns>" not in route.rule:
            continue
        parts = route.rule.split("/")
        plural = parts[4] if len(parts) > 4 else ""
        path = (
            route.rule.replace("<ns>", ns)
            .replace("<name>", SAMPLE_NAMES.get(plural, ""))
            .replace("<agent>", "bot")
            .replace("<session_id>", "s1")
            .replace("<turn_id>", "00000000-0000-0000-0000-000000000000")
        )
        body: dict | None = None
        if "/sessions" in route.rule:
            if route.rule.endswith("/message"):
                body = {"content": "hello"}
            elif route.method == "POST" and route.rule.endswith("/sessions"):
                body = {"id": "s1"}
        elif route.method in ("POST", "PUT"):
            body = SAMPLE_BODIES[plural](ns) if plural else samples.namespace(ns)
        elif route.method == "PATCH":
            body = {"metadata": {"labels": {"touched": "yes"}}}
        requests.append((route.method, path, body))
    return requests


def test_isolation_matrix_a_token_of_ns_a_never_sees_ns_b(two: Api) -> None:
    from talon import entrypoints

    scoped = two.as_token(two.token("admin", [A]))
    gateway = entrypoints.gateway()
    requests = _isolation_requests(gateway, B)
    # six kinds x two prefixes x six routes, four namespace routes, nine session routes x two
    # ... two schedule actions x two, an agent's effective tools x two, and three usage
    # routes (namespace, agent, session) x two
    assert len(requests) == 6 * 2 * 6 + 4 + 9 * 2 + 2 * 2 + 1 * 2 + 3 * 2
    assert ("GET", f"/v1/ns/{B}/agents/bot/tools", None) in requests
    assert any(path.endswith("/sessions/s1/usage") for _, path, _ in requests), requests
    for method, path, body in requests:
        response = scoped.request(method, path, json=body)
        assert response.status_code == 404, (method, path, response.status_code)
        assert response.json()["error"]["message"] == f"namespace {B!r} not found"
    # Indistinguishable from a namespace that does not exist at all, even for an admin.
    for method, path, body in _isolation_requests(gateway, "ghost"):
        ghost = two.request(method, path, json=body)
        assert ghost.status_code == 404, (method, path, ghost.text)
        assert ghost.json()["error"]["message"] == "namespace 'ghost' not found"
    # Nothing in B changed.
    assert two.ok("GET", f"/v1/ns/{B}/agents/bot")["metadata"]["generation"] == 1
    assert two.ok("GET", f"/v1/namespaces/{B}")["metadata"]["generation"] == 1


def test_isolation_in_lists_apply_and_namespace_creation(two: Api) -> None:
    scoped = two.as_token(two.token("admin", [A]))
    names = [n["metadata"]["name"] for n in scoped.ok("GET", "/v1/namespaces")["items"]]
    assert names == [A]
    apply = scoped.post("/v1/apply", json={"items": [samples.knowledge(B, "sneaky")]})
    assert apply.status_code == 404
    assert apply.json()["error"]["message"] == f"namespace {B!r} not found"
    # A Namespace item: overwriting a hidden namespace or creating a new one reads exactly
    # like a missing namespace, dry run or not (a dry run must not tell which exist).
    answers = []
    for name in (B, "brand-new"):
        for params in ({"dryRun": "true"}, None):
            item = {**samples.namespace(name), "spec": {"description": "taken over"}}
            response = scoped.post("/v1/apply", json={"items": [item]}, params=params)
            assert response.status_code == 404, response.text
            answers.append(response.json()["error"]["message"].replace(name, "<ns>"))
    assert len(set(answers)) == 1
    assert two.ok("GET", f"/v1/namespaces/{B}")["spec"]["description"] != "taken over"
    # Its own namespace it may still describe.
    own = {**samples.namespace(A), "spec": {"description": "ours"}}
    assert scoped.post("/v1/apply", json={"items": [own]}).status_code == 200
    # Creating a namespace outside the scope is refused the same way whether or not it exists.
    for name in (B, "brand-new"):
        response = scoped.post("/v1/namespaces", json=samples.namespace(name))
        assert response.status_code == 403
    assert two.get("/v1/namespaces/brand-new").status_code == 404
    assert two.get(f"/v1/ns/{B}/knowledge/sneaky").status_code == 404


def test_bootstrap_admin_comes_from_the_environment(gateway_url: str) -> None:
    whoami = Api(gateway_url, ADMIN_TOKEN).ok("GET", "/v1/whoami")
    assert whoami["tokenId"] == "bootstrap-admin"
    assert whoami["role"] == "admin" and whoami["namespaces"] == ["*"]
