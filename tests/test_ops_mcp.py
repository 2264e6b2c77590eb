"""The talon-ops MCP route: the ops_mcp function (functions-framework, ASGI) served over HTTP
and driven by the `mcp` SDK client: tools, namespace filtering, the history limit, write
roles, brokered tool-scoped tokens, expired and revoked tokens."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

import samples
from conftest import ROOT, Api, read_stream, serve_asgi
from talon import entrypoints
from talon.auth.tokens import TokenService
from talon.cli.manifest_files import read_documents
from talon.config import Settings
from talon.ops.mcp_app import OpsApp
from talon.services import Services
from talon.store.connect import connector_from_url
from talon.store.database import Database
from talon.store.local_postgres import free_port

SESSIONS = "/v1/ns/acme/agents/customer-support/sessions"
THREAD = {"namespace": "acme", "agent": "customer-support", "session_id": "enterprise-renewals"}


@pytest.fixture
def acme(api: Api, monkeypatch: pytest.MonkeyPatch, start_worker) -> Api:
    """The example manifests, another namespace, and one finished turn in acme."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    documents = [d.body for d in read_documents([str(ROOT / "manifests")])]
    items = [*documents, samples.namespace("globex"), samples.template("globex"),
             samples.agent("globex")]  # fmt: skip
    api.ok("POST", "/v1/apply", json={"items": items})
    start_worker(demo_fallback=True)
    api.ok("POST", SESSIONS, 201, json={"id": "enterprise-renewals"})
    accepted = api.ok("POST", f"{SESSIONS}/enterprise-renewals/message", 202,
                      json={"content": "Hello"})  # fmt: skip
    read_stream(api, f"{SESSIONS}/enterprise-renewals/stream",
                last_event_id=accepted["streamFrom"], params={"untilTurnEnd": "true"})  # fmt: skip
    api.turn_id = accepted["turnId"]  # type: ignore[attr-defined]
    return api


def mcp_call(
    url: str,
    token: str | None,
    tool: str | None = None,
    *,
    host: str | None = None,
    **arguments: Any,
) -> Any:
    """List the tools (tool=None) or call one; returns names, or (is_error, payload). `host`
    sends that Host header instead of the URL's."""

    async def run() -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if host is not None:
            headers["Host"] = host
        async with (
            httpx2.AsyncClient(headers=headers, timeout=30) as http,
            streamable_http_client(url, http_client=http) as streams,
            ClientSession(streams[0], streams[1]) as session,
        ):
            await session.initialize()
            if tool is None:
                return sorted(t.name for t in (await session.list_tools()).tools)
            result = await session.call_tool(tool, arguments)
            text = "".join(getattr(c, "text", "") for c in result.content)
            try:
                return result.is_error, json.loads(text)
            except ValueError:
                return result.is_error, text

    return asyncio.run(run())


def test_the_tools_and_a_session_inspected_with_an_acme_token(acme: Api, ops_server: str) -> None:
    token = acme.token("read", ["acme"])
    assert mcp_call(ops_server, token) == [
        "get_usage", "inspect_turn", "list_agents", "list_namespaces", "list_schedules",
        "list_sessions", "pause_schedule", "read_session", "trigger_schedule",
    ]  # fmt: skip
    assert mcp_call(ops_server, token, "list_namespaces") == (False, {"namespaces": ["acme"]})
    error, agents = mcp_call(ops_server, token, "list_agents", namespace="acme")
    assert not error and [a["name"] for a in agents["agents"]] == ["customer-support"]
    error, sessions = mcp_call(ops_server, token, "list_sessions", namespace="acme",
                               agent="customer-support")  # fmt: skip
    assert [s["id"] for s in sessions["sessions"]] == ["enterprise-renewals"]
    error, history = mcp_call(ops_server, token, "read_session", **THREAD)
    assert not error and history["messages"][0]["content"] == "Hello"
    error, turn = mcp_call(ops_server, token, "inspect_turn", namespace="acme",
                           agent="customer-support", session_id="enterprise-renewals",
                           turn_id=acme.turn_id)  # type: ignore[attr-defined]  # fmt: skip
    assert not error and turn["state"] == "completed"
    assert turn["steps"][0]["name"] == "load-knowledge" and "output" in turn["steps"][0]
    error, schedules = mcp_call(ops_server, token, "list_schedules", namespace="acme")
    assert schedules["schedules"][0]["name"] == "renewal-check"
    # The demo model reports no tokens: one model call, counted, with zero tokens.
    error, usage = mcp_call(ops_server, token, "get_usage", namespace="acme",
                            agent="customer-support", group_by="session")  # fmt: skip
    assert not error and usage["total"]["modelCalls"] == 1
    assert [g["key"] for g in usage["groups"]] == ["enterprise-renewals"]
    error, message = mcp_call(ops_server, token, "get_usage", namespace="acme", since="yesterday")
    assert error and "since must be an RFC 3339 date-time" in message


def test_other_namespaces_read_as_missing_and_writes_need_the_role(
    acme: Api, ops_server: str
) -> None:
    token = acme.token("read", ["acme"])
    hidden = mcp_call(ops_server, token, "list_agents", namespace="globex")
    missing = mcp_call(ops_server, token, "list_agents", namespace="nowhere")
    assert hidden[0] is True and hidden[1].replace("globex", "X") == missing[1].replace(
        "nowhere", "X"
    )
    refused = mcp_call(ops_server, token, "trigger_schedule", namespace="acme",
                       name="renewal-check")  # fmt: skip
    assert refused[0] is True
    assert refused[1].endswith("trigger_schedule needs the write role; the token has read")
    writer = acme.token("write", ["acme"])
    error, paused = mcp_call(ops_server, writer, "pause_schedule", namespace="acme",
                             name="renewal-check")  # fmt: skip
    assert not error and paused == {"name": "renewal-check", "enabled": False, "nextFireAt": None}
    error, fired = mcp_call(ops_server, writer, "trigger_schedule", namespace="acme",
                            name="renewal-check")  # fmt: skip
    assert not error and fired["outcome"] == "queued"


def test_the_history_limit_is_enforced_by_the_server(acme: Api, ops_server: str) -> None:
    error, history = mcp_call(ops_server, acme.token("read", ["acme"]), "read_session",
                              namespace="acme", agent="customer-support",
                              session_id="enterprise-renewals", limit=100_000)  # fmt: skip
    assert not error and history["limit"] == 200


def test_a_brokered_token_is_limited_to_its_namespace_and_tools(acme: Api, ops_server: str) -> None:
    minted = acme.ok("POST", "/v1/tokens", 201, json={
        "name": "agent-inspector", "role": "read", "namespaces": ["acme"],
        "tools": ["read_session", "inspect_turn"], "ttlSeconds": 600,
    })  # fmt: skip
    assert minted["tools"] == ["inspect_turn", "read_session"] and minted["expiresAt"]
    token = minted["token"]
    error, history = mcp_call(ops_server, token, "read_session", **THREAD)
    assert not error and history["messages"]
    refused = mcp_call(ops_server, token, "list_agents", namespace="acme")
    assert refused[0] is True and refused[1].endswith("this token may not call 'list_agents'")
    # Limited to talon-ops: the REST API refuses it.
    rest = httpx.get(f"{acme.base_url}/v1/ns/acme/agents",
                     headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert rest.status_code == 403 and "talon-ops" in rest.json()["error"]["message"]
    bad = acme.post("/v1/tokens", json={"name": "x", "role": "read", "namespaces": ["acme"],
                                        "tools": ["drop_database"]})  # fmt: skip
    assert bad.status_code == 422 and "unknown talon-ops tools" in bad.text


def test_expired_revoked_and_missing_tokens_are_refused(acme: Api, ops_server: str) -> None:
    expires = datetime.now(UTC) + timedelta(seconds=1.5)
    minted = acme.ok("POST", "/v1/tokens", 201, json={
        "name": "short", "role": "read", "namespaces": ["acme"],
        "expiresAt": expires.isoformat(),
    })  # fmt: skip
    assert mcp_call(ops_server, minted["token"], "list_namespaces")[0] is False
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.1)  # its time is up
    revoked = acme.token("read", ["acme"])
    token_id = next(t["id"] for t in acme.ok("GET", "/v1/tokens")["items"]
                    if t["name"].startswith("t-"))  # fmt: skip
    acme.ok("DELETE", f"/v1/tokens/{token_id}")
    for secret in (minted["token"], revoked, None, "tln_wrong"):
        response = httpx.post(ops_server, json={}, headers={
            "Authorization": f"Bearer {secret}"} if secret else {})  # fmt: skip
        # The MCP SDK's bearer auth answers, in the OAuth bearer-token shape (RFC 6750) that
        # MCP clients expect, rather than Talon's {"error": {"code", ...}}.
        assert response.status_code == 401, (secret, response.text)
        assert response.json() == {"error": "invalid_token",
                                   "error_description": "Authentication required"}  # fmt: skip
        assert response.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    assert httpx.get(ops_server, headers={"Authorization": f"Bearer {revoked}"}).status_code in (
        401, 405
    )  # fmt: skip


def test_a_database_outage_while_authenticating_is_a_503(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a 401 (the token may be fine) and not a 500: the verifier's error keeps its status."""
    services = Services.start(settings)
    # The real token service, on a database nothing listens for.
    services.tokens = TokenService(
        Database(connector_from_url(f"postgresql://talon@127.0.0.1:{free_port()}/talon", 2), 1)
    )
    try:
        with serve_asgi(OpsApp(services)) as base:
            response = httpx.post(f"{base}/mcp/talon-ops", json={},
                                  headers={"Authorization": "Bearer tln_anything"})  # fmt: skip
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "unavailable"
    finally:
        services.close()


INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "test", "version": "1"}}}  # fmt: skip
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


def test_dns_rebinding_protection_refuses_foreign_hosts_and_origins(
    api: Api, ops_server: str
) -> None:
    token = api.token("read", ["*"])
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {token}"}
    assert httpx.post(ops_server, json=INITIALIZE, headers=headers).status_code == 200
    foreign = httpx.post(ops_server, json=INITIALIZE, headers={**headers, "Host": "evil.test"})
    assert foreign.status_code == 421, foreign.text
    rebound = httpx.post(ops_server, json=INITIALIZE,
                         headers={**headers, "Host": "evil.test:8080"})  # fmt: skip
    assert rebound.status_code == 421
    page = httpx.post(ops_server, json=INITIALIZE,
                      headers={**headers, "Origin": "https://evil.test"})  # fmt: skip
    assert page.status_code == 403
    # The default list is loopback: a browser page served from it may call.
    local = ops_server.split("/")[2]
    same = httpx.post(ops_server, json=INITIALIZE, headers={**headers, "Origin": f"http://{local}"})
    assert same.status_code == 200
    # The real client through the SDK, with a loopback name.
    port = local.rsplit(":", 1)[1]
    assert mcp_call(ops_server, token, "list_namespaces", host=f"localhost:{port}")[0] is False


def test_the_allowed_hosts_come_from_the_configuration(
    api: Api, ops_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = api.token("read", ["*"])
    monkeypatch.setenv("TALON_GATEWAY_OPS_MCP_ALLOWED_HOSTS", "ops.example.test, other.test:*")
    entrypoints.reset()
    assert mcp_call(ops_server, token, "list_namespaces", host="ops.example.test")[0] is False
    assert mcp_call(ops_server, token, "list_namespaces", host="other.test:9")[0] is False
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {token}"}
    # Loopback is no longer listed.
    assert httpx.post(ops_server, json=INITIALIZE, headers=headers).status_code == 421


def test_the_gateway_forwards_with_the_upstreams_host(
    api: Api, ops_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ops_mcp function allows only its own host:port; through the gateway (another
    port) the tools work, because the gateway sends the upstream's Host, not the caller's."""
    upstream = ops_server.removesuffix("/mcp/talon-ops")
    monkeypatch.setenv("TALON_GATEWAY_OPS_MCP_UPSTREAM", upstream)
    monkeypatch.setenv("TALON_GATEWAY_OPS_MCP_ALLOWED_HOSTS", upstream.split("/")[2])
    entrypoints.reset()
    token = api.token("read", ["*"])
    via_gateway = f"{api.base_url}/mcp/talon-ops"
    assert mcp_call(via_gateway, token, "list_namespaces")[0] is False
    gateway_host = api.base_url.split("/")[2]
    assert mcp_call(via_gateway, token, "list_namespaces", host=gateway_host)[0] is False
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {token}", "Host": gateway_host}
    assert httpx.post(ops_server, json=INITIALIZE, headers=headers).status_code == 421


def test_isolation_matrix_every_tool_reads_a_hidden_namespace_as_missing(
    acme: Api, ops_server: str
) -> None:
    """Each talon-ops tool that names a namespace, called by an admin token of acme for
    globex (which exists) and for a namespace that does not: the same answer, and globex is
    untouched. The tools' arguments are filled so that only the namespace can fail."""
    from talon.ops.catalog import TOOLS

    token = acme.token("admin", ["acme"])
    arguments = {
        "list_agents": {}, "list_sessions": {"agent": "bot"}, "list_schedules": {},
        "read_session": {"agent": "bot", "session_id": "s1"},
        "inspect_turn": {"agent": "bot", "session_id": "s1", "turn_id": acme.turn_id},  # type: ignore[attr-defined]
        "trigger_schedule": {"name": "wake"}, "pause_schedule": {"name": "wake"},
        "get_usage": {"agent": "bot"},
    }  # fmt: skip
    assert {t.name for t in TOOLS} == {"list_namespaces", *arguments}  # a new tool is added here
    for tool, extra in arguments.items():
        hidden = mcp_call(ops_server, token, tool, namespace="globex", **extra)
        missing = mcp_call(ops_server, token, tool, namespace="nowhere", **extra)
        assert hidden[0] is True and missing[0] is True, (tool, hidden)
        assert hidden[1].replace("globex", "X") == missing[1].replace("nowhere", "X"), tool
    error, listed = mcp_call(ops_server, token, "list_namespaces")
    assert not error and listed == {"namespaces": ["acme"]}
    assert acme.ok("GET", "/v1/ns/globex/agents/bot")["metadata"]["generation"] == 1
