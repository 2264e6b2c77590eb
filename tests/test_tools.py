"""MCP tools through bindings, against real MCP servers built with the `mcp` SDK: listing,
policy filtering, calls with secret headers, refusals that never reach the server, timeouts,
a server that is down; and the same through a worker's turn."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import ADMIN_TOKEN, ROOT, Api, read_stream
from talon import entrypoints
from talon.cli.manifest_files import read_documents
from talon.examples.mcp_servers import RunningServer
from talon.runtime.context import agent_context
from talon.runtime.journal import Step, _step_event
from talon.runtime.tools import mcp_client
from talon.runtime.tools.base import AgentContext
from talon.runtime.tools.mcp_source import MCPToolSource
from talon.runtime.tools.registry import default_tools
from talon.sessions.views import ARGUMENTS_PREVIEW_CHARS, RESULT_PREVIEW_CHARS
from talon.store.local_postgres import free_port

STRIPE_AUTH = "Bearer sk_test_readonly_123"
SESSIONS = "/v1/ns/acme/agents/customer-support/sessions"


@pytest.fixture(scope="module")
def stripe() -> Iterator[RunningServer]:
    server = RunningServer("stripe")
    yield server
    server.close()


@pytest.fixture(scope="module")
def hubspot() -> Iterator[RunningServer]:
    server = RunningServer("hubspot")
    yield server
    server.close()


@pytest.fixture
def acme(
    api: Api, stripe: RunningServer, hubspot: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> Api:
    """The example manifests, with the MCP servers pointed at the running fixtures."""
    monkeypatch.setenv("STRIPE_READONLY_AUTHORIZATION", STRIPE_AUTH)
    monkeypatch.setenv("HUBSPOT_READONLY_AUTHORIZATION", "Bearer hubspot-token")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    documents = [d.body for d in read_documents([str(ROOT / "manifests")])]
    urls = {"stripe-readonly": stripe.url, "hubspot-readonly": hubspot.url}
    for document in documents:
        if document["kind"] == "MCPServer":
            document["spec"]["url"] = urls[document["metadata"]["name"]]
    api.ok("POST", "/v1/apply", json={"items": documents})
    stripe.calls.clear()
    hubspot.calls.clear()
    return api


def _context(agent: str = "customer-support") -> AgentContext:
    with entrypoints.services().db.transaction() as tx:
        return agent_context(tx, {"namespace": "acme", "agent": agent, "id": "t"})


def _source() -> MCPToolSource:
    services = entrypoints.services()
    return MCPToolSource(services.db, services.tenancy)


def _set_server(api: Api, name: str, spec: dict[str, Any]) -> None:
    api.ok("PATCH", f"/v1/ns/acme/mcp-servers/{name}", json={"spec": spec})


def _turn(api: Api, session: str, content: str) -> list[dict[str, Any]]:
    """Post `content` to a new session and read its stream to the end of the turn."""
    api.ok("POST", SESSIONS, 201, json={"id": session})
    accepted = api.ok("POST", f"{SESSIONS}/{session}/message", 202, json={"content": content})
    return read_stream(api, f"{SESSIONS}/{session}/stream", last_event_id=accepted["streamFrom"],
                       params={"untilTurnEnd": "true"})  # fmt: skip


def test_an_agent_sees_the_tools_its_bindings_grant(acme: Api) -> None:
    toolset = _source().tools_for(_context())
    assert toolset.unavailable == []
    names = sorted(t.name for t in toolset.tools)
    # stripe: allow get_*/list_*/search_*, read-only; hubspot: deny delete_*, read-only
    # (create_note writes, so the read-only binding hides it).
    assert names == [
        "hubspot-readonly.search_companies",
        "stripe-readonly.get_subscriptions",
        "stripe-readonly.list_invoices",
        "stripe-readonly.search_invoices",
    ]
    listed = next(t for t in toolset.tools if t.name == "stripe-readonly.list_invoices")
    assert listed.parameters["required"] == ["customer_id"]
    assert "invoices" in listed.description


def test_a_call_reaches_the_server_with_its_secret_header(acme: Api, stripe: RunningServer) -> None:
    result = _source().call(
        _context(), "stripe-readonly.list_invoices", {"customer_id": "cus_acme_001"}
    )
    assert not result.is_error
    assert "in_1001" in result.content and "in_0990" in result.content
    assert stripe.calls["list_invoices"] == 1
    assert stripe.headers_seen[-1]["authorization"] == STRIPE_AUTH


def test_denied_and_unknown_tools_never_reach_the_server(
    acme: Api, stripe: RunningServer, hubspot: RunningServer
) -> None:
    source, context = _source(), _context()
    refused = {
        "stripe-readonly.refund_invoice": "denied by the agent's MCP bindings",  # not allowed
        "hubspot-readonly.delete_contact": "denied by the agent's MCP bindings",  # denied
        "hubspot-readonly.create_note": "denied by the agent's MCP bindings",  # writes
        "stripe-readonly.no_such_tool": "has no such tool",
        "billing.list_invoices": "no binding grants this agent that server",
    }
    for name, why in refused.items():
        result = source.call(context, name, {"invoice_id": "in_1001", "contact_id": "c1"})
        assert result.is_error and why in result.content, (name, result.content)
    assert sum(stripe.calls.values()) == 0 and sum(hubspot.calls.values()) == 0


def test_a_server_without_a_binding_gives_no_tools(acme: Api) -> None:
    acme.ok("DELETE", "/v1/ns/acme/mcp-bindings/customer-support-hubspot")
    names = {t.name for t in _source().tools_for(_context()).tools}
    assert not any(n.startswith("hubspot-readonly.") for n in names)
    assert "stripe-readonly.list_invoices" in names
    result = _source().call(_context(), "hubspot-readonly.search_companies", {"name": "acme"})
    assert result.is_error and "no binding" in result.content


def test_a_slow_tool_call_times_out(acme: Api, stripe: RunningServer) -> None:
    _set_server(acme, "stripe-readonly", {"timeoutSeconds": 1})
    started = time.monotonic()
    result = _source().call(
        _context(), "stripe-readonly.search_invoices", {"query": "acme", "seconds": 4}
    )
    assert result.is_error and "timed out" in result.content
    assert time.monotonic() - started < 4


def test_a_server_that_is_down_is_reported_not_fatal(acme: Api) -> None:
    _set_server(acme, "hubspot-readonly", {"url": f"http://127.0.0.1:{free_port()}/mcp"})
    toolset = _source().tools_for(_context())
    assert [u["source"] for u in toolset.unavailable] == ["mcp:hubspot-readonly"]
    assert "stripe-readonly.list_invoices" in {t.name for t in toolset.tools}
    result = _source().call(_context(), "hubspot-readonly.search_companies", {"name": "acme"})
    assert result.is_error and "unavailable" in result.content


def test_a_missing_secret_makes_the_server_unavailable(
    acme: Api, stripe: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STRIPE_READONLY_AUTHORIZATION")
    requests = len(stripe.headers_seen)
    toolset = _source().tools_for(_context())
    (problem,) = toolset.unavailable
    assert problem["source"] == "mcp:stripe-readonly"
    assert "STRIPE_READONLY_AUTHORIZATION is not set" in problem["error"]
    assert len(stripe.headers_seen) == requests  # never contacted without its credentials


def test_a_header_from_secret_manager_reaches_the_server(
    acme: Api, stripe: RunningServer, secret_manager: Any
) -> None:
    """The same Secret Manager path as model keys: read at call time, cached, never stored."""
    secret = "projects/test-project/secrets/stripe-auth"
    secret_manager.add_version(secret, "Bearer sk_from_secret_manager")
    _set_server(acme, "stripe-readonly", {"url": stripe.url, "headers": [
        {"name": "Authorization", "valueFrom": {"secret": secret}}]})  # fmt: skip
    for _ in range(2):
        result = _source().call(_context(), "stripe-readonly.list_invoices",
                                {"customer_id": "cus_acme_001"})  # fmt: skip
        assert not result.is_error, result.content
    assert stripe.headers_seen[-1]["authorization"] == "Bearer sk_from_secret_manager"
    assert secret_manager.accesses == [f"{secret}/versions/latest"]  # cached, read once


def test_guarded_clients_share_one_tls_context_that_verifies() -> None:
    """Building a TLS context loads the CA bundle (~20 ms of CPU, twice per client: its
    transport's pool and the guarded one), and every MCP call builds a client: that was
    most of a tool call's 55 ms. The guarded clients of any policy share one context per
    library, which still checks certificates and host names."""
    import ssl

    from talon.tenancy.egress import EgressPolicy
    from talon.tenancy.http_guard import guarded_async_client, guarded_client

    policies = (EgressPolicy(), EgressPolicy(frozenset({"http"}), allow_loopback=True))
    # httpcore's pools keep their context in `_ssl_context` (the versions are pinned).
    sync = {id(guarded_client(p)._transport._pool._ssl_context) for p in policies}
    clients = [guarded_async_client(p) for p in policies]
    contexts = [c._transport._pool._ssl_context for c in clients]
    assert len(sync) == 1
    assert len({id(c) for c in contexts}) == 1
    assert contexts[0].verify_mode == ssl.CERT_REQUIRED and contexts[0].check_hostname


def _turn_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "talon-mcp-turn"]


def test_a_turns_calls_to_a_server_share_one_session(acme: Api, stripe: RunningServer) -> None:
    """A call of its own costs the server a connection, the initialize handshake and a tool
    list (the SDK checks results against it), ~11 ms: a turn's calls share one session, so
    each later call is one request; the session ends with the turn."""
    source, context = _source(), _context()
    arguments = {"customer_id": "cus_acme_001"}
    source.tools_for(context)  # the tool lists, cached from here on
    before = len(stripe.headers_seen)
    assert not source.call(context, "stripe-readonly.list_invoices", arguments).is_error
    alone = len(stripe.headers_seen) - before
    before = len(stripe.headers_seen)
    with source.turn():
        for _ in range(3):
            result = source.call(context, "stripe-readonly.list_invoices", arguments)
            assert not result.is_error and "in_1001" in result.content
        assert _turn_threads() == ["talon-mcp-turn"]
    assert len(stripe.headers_seen) - before == alone + 2  # two more tools/call requests
    assert alone == 4  # initialize, initialized, tools/call and the SDK's tools/list
    assert stripe.calls["list_invoices"] == 4
    assert _turn_threads() == []  # the turn's loop ended with it


def test_a_session_the_server_forgot_is_opened_again_for_the_call(acme: Api) -> None:
    """A server restarted during a turn no longer knows the turn's session and answers 404
    ("Session terminated") before running anything: the call goes through a new session.
    Any other failure drops the session and is the call's error, as for a call alone."""
    server = RunningServer("stripe", stateless=False)
    port = server.port
    try:
        _set_server(acme, "stripe-readonly", {"url": server.url})
        source, context = _source(), _context()
        arguments = {"customer_id": "cus_acme_001"}
        source.tools_for(context)  # the tool lists, cached from here on
        listed = len(server.headers_seen)
        with source.turn():
            for _ in range(2):
                result = source.call(context, "stripe-readonly.list_invoices", arguments)
                assert not result.is_error, result.content
            seen = server.headers_seen[listed:]
            sessions = {h.get("mcp-session-id") for h in seen} - {None}
            server.close()
            server = RunningServer("stripe", port, stateless=False)  # knows no session
            result = source.call(context, "stripe-readonly.list_invoices", arguments)
            assert not result.is_error, result.content
            assert server.calls["list_invoices"] == 1
            server.close()  # down: the call fails, as it would alone
            result = source.call(context, "stripe-readonly.list_invoices", arguments)
            assert result.is_error and "failed" in result.content
            server = RunningServer("stripe", port, stateless=False)
            result = source.call(context, "stripe-readonly.list_invoices", arguments)
            assert not result.is_error, result.content  # a new session for the next call
        assert len(sessions) == 1
        assert _turn_threads() == []
    finally:
        server.close()


def test_a_hung_call_in_a_turn_times_out_and_the_next_call_goes_on(
    acme: Api, stripe: RunningServer
) -> None:
    _set_server(acme, "stripe-readonly", {"timeoutSeconds": 1})
    source, context = _source(), _context()
    with source.turn():
        started = time.monotonic()
        result = source.call(
            context, "stripe-readonly.search_invoices", {"query": "acme", "seconds": 4}
        )
        assert result.is_error and "timed out" in result.content
        assert time.monotonic() - started < 4
        result = source.call(
            context, "stripe-readonly.list_invoices", {"customer_id": "cus_acme_001"}
        )
        assert not result.is_error, result.content
    assert _turn_threads() == []


class _Gateway:
    """In front of a stateful fixture server: refuses the session's GET stream with 404 (a
    gateway that routes only POST and DELETE) or never answers its DELETE (a quiet end)."""

    def __init__(self, app: Any, *, quiet_delete: bool = False) -> None:
        self.app = app
        self.quiet_delete = quiet_delete

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        import asyncio

        if scope["type"] == "http" and scope["method"] == "GET":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"not found"})
            return
        if scope["type"] == "http" and scope["method"] == "DELETE" and self.quiet_delete:
            await asyncio.sleep(30)
        await self.app(scope, receive, send)


@pytest.fixture
def gateway_server() -> Iterator[tuple[Any, _Gateway, Any]]:
    """(the fixture's tool calls counter, its gateway, its URL)."""
    from collections import Counter

    import uvicorn

    from talon.examples.mcp_servers import stripe_server

    calls: Counter[str] = Counter()
    app = stripe_server(calls).streamable_http_app(stateless_http=False, json_response=True)
    gateway = _Gateway(app)
    port = free_port()
    config = uvicorn.Config(gateway, host="127.0.0.1", port=port, log_level="warning",
                            timeout_graceful_shutdown=1)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield calls, gateway, f"http://127.0.0.1:{port}/mcp"
    server.should_exit = True
    thread.join(timeout=10)


def test_a_call_that_may_have_run_is_never_made_again(gateway_server: Any) -> None:
    """Only a `tools/call` the server refused as not knowing the session is made again on
    a new session: a 404 to the session's GET stream says nothing about the call, and a call
    that timed out (it may have run) stays failed."""
    from talon.runtime.tools.mcp_sessions import TurnSessions
    from talon.tenancy.egress import EgressPolicy

    calls, _, url = gateway_server
    egress = EgressPolicy(frozenset({"http"}), allow_loopback=True)
    sessions = TurnSessions()
    try:
        first = sessions.call_tool(url, {}, "list_invoices", {"customer_id": "cus_acme_001"},
                                   5, egress)  # fmt: skip
        assert not first.is_error
        with pytest.raises(mcp_client.MCPUnavailable, match="timed out"):
            sessions.call_tool(url, {}, "search_invoices", {"query": "x", "seconds": 1.5},
                               1, egress)  # fmt: skip
        time.sleep(1.0)  # the server finishes the call it was given
    finally:
        sessions.close()
    assert calls["search_invoices"] == 1


def test_a_server_that_never_ends_its_session_holds_the_turn_a_second(
    gateway_server: Any,
) -> None:
    from talon.runtime.tools.mcp_sessions import END_SECONDS, TurnSessions
    from talon.tenancy.egress import EgressPolicy

    _, gateway, url = gateway_server
    gateway.quiet_delete = True
    egress = EgressPolicy(frozenset({"http"}), allow_loopback=True)
    sessions = TurnSessions()
    result = sessions.call_tool(url, {}, "list_invoices", {"customer_id": "cus_acme_001"}, 5,
                                egress)  # fmt: skip
    assert not result.is_error
    started = time.monotonic()
    sessions.close()
    assert time.monotonic() - started < END_SECONDS + 1.5
    assert _turn_threads() == []


def test_tool_lists_are_cached_per_server_version(acme: Api, stripe: RunningServer) -> None:
    source = _source()
    source.tools_for(_context())
    requests = len(stripe.headers_seen)
    source.tools_for(_context())
    assert len(stripe.headers_seen) == requests  # served from the cache
    _set_server(acme, "stripe-readonly", {"description": "changed"})  # a new version
    source.tools_for(_context())
    assert len(stripe.headers_seen) > requests
    requests = len(stripe.headers_seen)
    source.invalidate("acme", "MCPServer", "stripe-readonly")  # a lifecycle event
    source.tools_for(_context())
    assert len(stripe.headers_seen) > requests


def test_the_registry_merges_builtins_skills_and_mcp_tools(acme: Api, tmp_path: Any) -> None:
    skill = tmp_path / "renewal-playbook" / "SKILL.md"
    skill.parent.mkdir()
    skill.write_text("---\nname: renewal-playbook\ndescription: How to run renewals.\n---\nStep 1.")
    acme.ok("PATCH", "/v1/ns/acme/agent-templates/customer-support",
            json={"definition": {"skills": ["renewal-playbook"]}})  # fmt: skip
    services = entrypoints.services()
    registry = default_tools(services.db, tmp_path, services.tenancy)
    names = [t.name for t in registry.tools_for(_context()).tools]
    assert names[:2] == ["talon.current_time", "skill.renewal-playbook"]
    assert "stripe-readonly.list_invoices" in names
    assert registry.call(_context(), "skill.renewal-playbook", {}).content == "Step 1."
    assert '"timezone": "UTC"' in registry.call(_context(), "talon.current_time", {}).content
    with registry.turn():  # the MCP source's turn scope: the call holds a session till the end
        assert not registry.call(_context(), "stripe-readonly.list_invoices",
                                 {"customer_id": "cus_acme_001"}).is_error  # fmt: skip
        assert _turn_threads() == ["talon-mcp-turn"]
    assert _turn_threads() == []


def test_a_turn_calls_an_mcp_tool_and_the_stream_shows_it(
    acme: Api, stripe: RunningServer, start_worker
) -> None:
    start_worker(demo_fallback=True)  # the default registry: built-ins, skills/, MCP
    events = _turn(acme, "billing", "List the open invoices, please.")
    steps = [(e["type"], e["data"].get("step")) for e in events if e["type"].startswith("step.")]
    assert ("step.completed", "call-stripe-readonly.list_invoices") in steps
    # The call's arguments as it starts and its result as it ends, before the turn's end.
    started, done = (
        next(e for e in events if e["type"] == kind and e["data"]["step"].startswith("call-s"))
        for kind in ("step.started", "step.completed")
    )
    assert started["data"]["tool"] == "stripe-readonly.list_invoices"
    assert json.loads(started["data"]["arguments"]) == {"customer_id": "cus_acme_001"}
    assert started["data"]["callId"] == done["data"]["callId"]
    assert "in_1001" in done["data"]["result"] and done["data"]["isError"] is False
    assert started["id"] < done["id"] < events[-1]["id"]
    # The turn's view has the same previews (a page opened mid-turn shows earlier calls).
    turn = acme.ok("GET", f"{SESSIONS}/billing/turns/{done['turnId']}")
    step = next(s for s in turn["steps"] if s["kind"] == "tool")
    assert {k: step[k] for k in ("tool", "callId", "arguments", "result")} == {
        k: done["data"][k] for k in ("tool", "callId", "arguments", "result")
    }
    assert "output" not in step and "arguments" not in turn["steps"][1]  # a model step
    assert events[-1]["type"] == "turn.completed"
    assert stripe.calls["list_invoices"] == 1
    answer = acme.ok("GET", f"{SESSIONS}/billing/messages")["items"][-1]
    assert answer["role"] == "assistant" and "in_1001" in answer["content"]


def test_a_turn_goes_on_without_a_server_that_is_down(acme: Api, start_worker) -> None:
    _set_server(acme, "stripe-readonly", {"url": f"http://127.0.0.1:{free_port()}/mcp"})
    start_worker(demo_fallback=True)  # the default registry: built-ins, skills/, MCP
    events = _turn(acme, "down", "List the open invoices, please.")
    unavailable = next(e for e in events if e["type"] == "tools.unavailable")
    assert unavailable["data"]["sources"][0]["source"] == "mcp:stripe-readonly"
    assert events[-1]["type"] == "turn.completed"


def test_the_seed_turn_completes_against_the_strict_model_server(
    acme: Api, stripe: RunningServer, start_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seed's own turn (`customer-support`, session `enterprise-renewals`) with the example
    manifests, the default tool registry and a model server as strict as OpenAI's API (and as
    strict about the key): the model calls the skill and the Stripe tool by their wire names,
    and journal, stream, history and talon-ops show the registry names."""
    from model_server import ModelServer
    from talon.ops.tools import OpsTools

    model = ModelServer(api_keys={"sk-seed-0123"})
    monkeypatch.setenv("ACME_OPENAI_KEY", "sk-seed-0123")  # granted to acme (talon-test.yaml)
    template = next(d for d in (d.body for d in read_documents([str(ROOT / "manifests")]))
                    if d["kind"] == "AgentTemplate")  # fmt: skip
    profile_model = template["definition"]["modelPolicy"]["profiles"][0]["model"]
    profile_model.update(baseUrl=model.url, apiKeyFrom={"env": "ACME_OPENAI_KEY"})
    acme.ok("POST", "/v1/apply", json={"items": [template]})
    model.add(
        {"tool_calls": [{"name": "skill_renewal-outreach"}]},
        {"tool_calls": [{"name": "stripe-readonly_list_invoices",
                         "arguments": {"customer_id": "cus_acme_001"}}]},
        {"content": "Drafting account-by-account follow-ups."},
    )  # fmt: skip
    try:
        start_worker()  # the default registry: built-ins, skills/, MCP
        events = _turn(acme, "enterprise-renewals", "Review renewals due in 14 days.")
    finally:
        model.close()
    assert not model.refused and not model.script_errors
    offered = sorted(t["function"]["name"] for t in model.requests[0]["tools"])
    assert "stripe-readonly_list_invoices" in offered and "talon_current_time" in offered
    assert "skill_renewal-outreach" in offered
    steps = [e["data"]["step"] for e in events if e["type"] == "step.completed"]
    assert steps == [
        "load-knowledge", "call-model", "call-skill.renewal-outreach", "call-model",
        "call-stripe-readonly.list_invoices", "call-model", "write-next-message",
    ]  # fmt: skip
    assert events[-1]["type"] == "turn.completed"
    assert stripe.calls["list_invoices"] == 1
    messages = acme.ok("GET", f"{SESSIONS}/enterprise-renewals/messages")["items"]
    assert [c["name"] for m in messages for c in m.get("toolCalls") or []] == [
        "skill.renewal-outreach", "stripe-readonly.list_invoices"
    ]  # fmt: skip
    assert messages[-1]["content"] == "Drafting account-by-account follow-ups."
    # The last request carried the whole exchange, tool results paired with their calls.
    assert [m["role"] for m in model.requests[-1]["messages"]] == [
        "system", "user", "assistant", "tool", "assistant", "tool"
    ]  # fmt: skip
    services = entrypoints.services()
    admin = services.tokens.authenticate(ADMIN_TOKEN)
    turn = OpsTools(services).run(admin, "inspect_turn", {
        "namespace": "acme", "agent": "customer-support", "session_id": "enterprise-renewals",
        "turn_id": events[-1]["turnId"],
    })  # fmt: skip
    assert [s["output"]["call"]["name"] for s in turn["steps"] if s["kind"] == "tool"] == [
        "skill.renewal-outreach", "stripe-readonly.list_invoices"
    ]  # fmt: skip


# --- GET .../agents/{agent}/tools: the same resolution, through the public API ----------------

TOOLS = "/v1/ns/acme/agents/customer-support/tools"


def test_the_api_lists_the_effective_tools_with_their_sources(
    acme: Api, stripe: RunningServer
) -> None:
    answer = acme.ok("GET", TOOLS)
    by_name = {t["name"]: t for t in answer["tools"]}
    # Exactly what a turn would offer: the worker's registry, name for name.
    worker_names = [t.name for t in default_tools(
        entrypoints.services().db, ROOT / "skills", entrypoints.services().tenancy
    ).tools_for(_context()).tools]  # fmt: skip
    assert list(by_name) == worker_names
    assert by_name["talon.current_time"]["source"] == {"type": "builtin"}
    assert by_name["skill.renewal-outreach"]["source"]["skill"] == "renewal-outreach"
    listed = by_name["stripe-readonly.list_invoices"]
    assert listed["source"] == {
        "type": "mcp",
        "server": "stripe-readonly",
        "tool": "list_invoices",
        "allowedBy": ["customer-support-stripe"],
    }
    assert listed["readOnlyHint"] is True and listed["inputSchema"]["required"] == ["customer_id"]
    assert by_name["hubspot-readonly.search_companies"]["source"]["allowedBy"] == [
        "customer-support-hubspot"
    ]
    servers = {s["server"]: s for s in answer["servers"]}
    assert servers["stripe-readonly"]["state"] == "available"
    assert servers["stripe-readonly"]["withheld"] == ["refund_invoice"]  # not allowed
    assert servers["stripe-readonly"]["bindings"] == [{
        "name": "customer-support-stripe", "allow": ["get_*", "list_*", "search_*"],
        "deny": [], "readOnly": True}]  # fmt: skip
    # delete_contact is denied, create_note writes (the binding is read-only).
    assert sorted(servers["hubspot-readonly"]["withheld"]) == ["create_note", "delete_contact"]
    assert answer["unavailable"] == []
    assert stripe.headers_seen[-1]["authorization"] == STRIPE_AUTH  # listed with its secret
    assert sum(stripe.calls.values()) == 0  # listing calls no tool
    assert acme.ok("GET", TOOLS.replace("/ns/", "/namespaces/")) == answer


def test_the_api_reports_an_unreachable_or_unbound_server_instead_of_failing(
    acme: Api,
) -> None:
    _set_server(acme, "hubspot-readonly", {"url": f"http://127.0.0.1:{free_port()}/mcp"})
    acme.ok("DELETE", "/v1/ns/acme/mcp-bindings/customer-support-stripe")
    answer = acme.ok("GET", TOOLS)
    servers = {s["server"]: s for s in answer["servers"]}
    assert servers["hubspot-readonly"]["state"] == "unavailable"
    assert servers["hubspot-readonly"]["error"]
    assert servers["stripe-readonly"] == {"server": "stripe-readonly", "state": "unbound",
                                          "error": None, "bindings": [], "tools": [],
                                          "withheld": []}  # fmt: skip
    assert [u["source"] for u in answer["unavailable"]] == ["mcp:hubspot-readonly"]
    assert [t["source"]["type"] for t in answer["tools"]] == ["builtin", "skill"]


def test_a_server_that_never_answers_costs_the_api_its_timeout(acme: Api) -> None:
    silent = socket.socket()  # accepts connections (the backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/mcp"
        _set_server(acme, "stripe-readonly", {"timeoutSeconds": 1, "url": url})
        started = time.monotonic()
        answer = acme.ok("GET", TOOLS)
        assert time.monotonic() - started < 10
    finally:
        silent.close()
    states = {s["server"]: s["state"] for s in answer["servers"]}
    assert states == {"stripe-readonly": "unavailable", "hubspot-readonly": "available"}


def test_the_api_tools_of_a_failed_or_missing_agent(acme: Api) -> None:
    missing = acme.get("/v1/ns/acme/agents/nobody/tools")
    assert missing.status_code == 404
    # A template change the agent does not satisfy: it turns Failed.
    definition = acme.ok("GET", "/v1/ns/acme/agent-templates/customer-support")["definition"]
    definition["customSpec"]["features"].append({"name": "region", "required": True})
    acme.ok("PATCH", "/v1/ns/acme/agent-templates/customer-support",
            json={"definition": definition})  # fmt: skip
    failed = acme.get(TOOLS)
    assert failed.status_code == 409 and "does not resolve" in failed.json()["error"]["message"]


def test_a_token_for_another_namespace_cannot_list_an_agents_tools(
    acme: Api, stripe: RunningServer
) -> None:
    acme.ok("POST", "/v1/namespaces", 201, json={"metadata": {"name": "globex"}})
    outsider = acme.as_token(acme.token("admin", ["globex"]))
    requests = len(stripe.headers_seen)
    for path in (TOOLS, TOOLS.replace("/ns/", "/namespaces/")):
        answer = outsider.get(path)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
    # Same as a namespace that does not exist, and the servers were never contacted.
    assert outsider.get("/v1/ns/nowhere/agents/customer-support/tools").json()["error"][
        "message"
    ] == answer.json()["error"]["message"].replace("acme", "nowhere")
    assert len(stripe.headers_seen) == requests
    reader = acme.as_token(acme.token("read", ["acme"]))
    assert reader.ok("GET", TOOLS)["agent"] == "customer-support"


@pytest.mark.fast
def test_tool_step_events_carry_bounded_arguments_and_results() -> None:
    call = {"id": "c1", "name": "x.big", "arguments": json.dumps({"q": "a" * 5000})}
    started = _step_event(Step(3, "call-x.big", "tool", "started", {"call": call}))
    assert started["arguments"] == call["arguments"][:ARGUMENTS_PREVIEW_CHARS]
    assert started["argumentsTruncated"] == len(call["arguments"])
    assert "result" not in started
    output = {"call": call, "result": "r" * 3000, "isError": False}
    done = _step_event(Step(3, "call-x.big", "tool", "completed", output), summary=True)
    assert len(done["result"]) == RESULT_PREVIEW_CHARS and done["resultTruncated"] == 3000
    small = _step_event(
        Step(
            4,
            "call-x.s",
            "tool",
            "completed",
            {"call": {**call, "arguments": "{}"}, "result": "ok"},
        ),
        summary=True,
    )
    assert small["arguments"] == "{}" and small["result"] == "ok"
    assert "argumentsTruncated" not in small and "resultTruncated" not in small
