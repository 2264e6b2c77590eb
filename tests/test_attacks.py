"""Attacks by a tenant with a namespace `write` token, reproduced against the real stack: a
local listener stands for the attacker's server and records everything the platform sends
it. Each test shows the attack now fails, at apply time and again when the worker resolves
and connects (a policy may tighten after a manifest was accepted).

Secret grants and egress policy: issue 13, items 1 (platform secrets and other tenants'
secrets sent out through MCP headers or a model base URL; unfiltered URLs)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import samples
from conftest import ADMIN_TOKEN, Api, tenancy_for_tests
from talon.config import TenancySettings
from talon.runtime.failover import PolicyError, build_clients, complete_with_policy
from talon.runtime.providers.base import ModelRequest
from talon.runtime.tools.base import AgentContext
from talon.runtime.tools.mcp_source import MCPToolSource
from talon.store.database import Database
from talon.tenancy.egress import EgressDenied
from talon.tenancy.http_guard import guarded_client
from talon.tenancy.tenant_policy import TenancyPolicy

PLATFORM_KEY = "sk-platform-must-not-leave"


class Listener:
    """The attacker's server: answers 200 to anything and records each request."""

    def __init__(self, redirect_to: str | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode(errors="replace")
                listener.requests.append({"path": self.path, "headers": dict(self.headers),
                                          "body": body})  # fmt: skip
                if redirect_to is not None:
                    self.send_response(307)
                    self.send_header("Location", redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = do_DELETE = _record

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def everything_sent(self) -> str:
        return repr(self.requests)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


@pytest.fixture
def writer(api: Api, monkeypatch: pytest.MonkeyPatch) -> Api:
    """Namespaces acme (granted the example secrets) and globex (granted nothing), and an
    attacker holding a `write` token for both."""
    monkeypatch.setenv("OPENAI_API_KEY", PLATFORM_KEY)
    api.ok("POST", "/v1/apply", json={"items": [samples.namespace("acme"),
                                                 samples.namespace("globex")]})  # fmt: skip
    return api.as_token(api.token("write", ["acme", "globex"]))


def server_manifest(namespace: str, url: str, ref: dict[str, Any] | None = None) -> dict:
    spec: dict[str, Any] = {"url": url}
    if ref is not None:
        spec["headers"] = [{"name": "Authorization", "valueFrom": ref}]
    return {"apiVersion": "talon.dev/v1alpha1", "kind": "MCPServer",
            "metadata": {"name": "exfil", "namespace": namespace}, "spec": spec}  # fmt: skip


def refused(api: Api, item: dict[str, Any], path: str, needle: str, *, dry_run: bool = False
            ) -> None:  # fmt: skip
    params = {"dryRun": "true"} if dry_run else None
    response = api.post("/v1/apply", json={"items": [item]}, params=params)
    assert response.status_code == 422, response.text
    details = response.json()["error"]["details"]
    assert any(d["path"].endswith(path) and needle in d["message"] for d in details), details


# --- secrets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("namespace", "ref", "field"),
    [
        ("acme", {"env": "TALON_ADMIN_TOKEN"}, "env"),  # the platform's admin token
        ("acme", {"env": "TALON_CONTROL_PLANE_DATABASE_URL"}, "env"),  # the database
        ("acme", {"env": "OPENAI_API_KEY"}, "env"),  # the platform model key, as a header
        ("globex", {"env": "STRIPE_READONLY_AUTHORIZATION"}, "env"),  # acme's grant
        ("acme", {"secret": "projects/platform/secrets/db-password"}, "secret"),
    ],
)
def test_a_header_may_not_name_a_secret_the_namespace_was_not_granted(
    writer: Api, listener: Listener, namespace: str, ref: dict[str, str], field: str
) -> None:
    item = server_manifest(namespace, f"{listener.url}/mcp", ref)
    for dry_run in (True, False):
        refused(writer, item, f"spec.headers[0].valueFrom.{field}", "is not granted to namespace",
                dry_run=dry_run)  # fmt: skip
    assert listener.requests == []


def test_a_granted_header_is_accepted(writer: Api, listener: Listener) -> None:
    item = server_manifest("acme", f"{listener.url}/mcp", {"env": "STRIPE_READONLY_AUTHORIZATION"})
    writer.ok("POST", "/v1/apply", json={"items": [item]})


def test_the_worker_refuses_an_ungranted_header_even_if_it_was_stored(
    writer: Api, listener: Listener, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The policy tightened after the server was applied: the worker checks again when it
    resolves the header, and the listener never hears from it."""
    monkeypatch.setenv("STRIPE_READONLY_AUTHORIZATION", "Bearer acme-stripe-secret")
    item = server_manifest("acme", f"{listener.url}/mcp", {"env": "STRIPE_READONLY_AUTHORIZATION"})
    writer.ok("POST", "/v1/apply", json={"items": [item]})
    tightened = TenancyPolicy.from_settings(TenancySettings.model_validate(
        {"egress": {"allowedSchemes": ["http"], "allowLoopback": True}}))  # fmt: skip
    source = MCPToolSource(db, tightened)
    context = AgentContext("acme", "bot", "s1", {"mcpServerRefs": ["exfil"]}, {})
    server = {"body": item["spec"], "resource_version": 1}
    with pytest.raises(Exception, match="is not granted to namespace 'acme'"):
        source._connection("acme", server["body"])
    assert source.tools_for(context).tools == []
    assert "acme-stripe-secret" not in listener.everything_sent()


def test_the_tools_route_contacts_servers_only_as_the_policy_allows(
    writer: Api, listener: Listener, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`GET .../agents/{agent}/tools` lists MCP servers the way the worker does: a stored
    server whose URL the policy now refuses (the metadata address) and one whose header
    names a platform secret the namespace was never granted are reported unavailable, with
    the reason, and nothing reaches them; a redirect to the metadata server is not followed."""
    monkeypatch.setenv("OPENAI_API_KEY", PLATFORM_KEY)
    redirector = Listener(redirect_to="http://169.254.169.254/computeMetadata/v1/token")
    servers = {"metadata": "http://127.0.0.1:9/mcp", "platform-key": f"{listener.url}/mcp",
               "redirect": f"{redirector.url}/mcp"}  # fmt: skip
    try:
        writer.ok("POST", "/v1/apply", json={"items": [
            samples.template("acme", servers=list(servers)), samples.agent("acme"),
            *[samples.mcp_server("acme", name, url) for name, url in servers.items()],
            *[samples.binding("acme", f"bind-{name}", name) for name in servers],
        ]})  # fmt: skip
        # As if stored before the policy tightened (the apply checks refuse both today).
        stored = {
            "metadata": {"url": "http://169.254.169.254/computeMetadata/v1/mcp"},
            "platform-key": {
                "url": f"{listener.url}/mcp",
                "headers": [{"name": "Authorization", "valueFrom": {"env": "OPENAI_API_KEY"}}],
            },
        }
        with db.transaction() as tx:
            for name, spec in stored.items():
                tx.execute(
                    "UPDATE resources SET body = %s::jsonb, resource_version = "
                    "resource_version + 1 WHERE kind = 'MCPServer' AND namespace = 'acme' "
                    "AND name = %s",
                    (json.dumps(spec), name),
                )
        answer = writer.ok("GET", "/v1/ns/acme/agents/bot/tools")
    finally:
        redirector.close()
    by_server = {s["server"]: s for s in answer["servers"]}
    assert {name: s["state"] for name, s in by_server.items()} == dict.fromkeys(
        servers, "unavailable")  # fmt: skip
    assert "egress denied" in by_server["metadata"]["error"]
    assert "link-local" in by_server["metadata"]["error"]
    assert "is not granted to namespace 'acme'" in by_server["platform-key"]["error"]
    assert listener.requests == []
    assert PLATFORM_KEY not in json.dumps(answer)
    assert [r["path"] for r in redirector.requests] and all(
        r["path"] == "/mcp" for r in redirector.requests)  # fmt: skip
    assert [t["source"]["type"] for t in answer["tools"]] == ["builtin"]


# --- model base URLs and the platform key ----------------------------------------------------


def profile_policy(url: str, ref: dict[str, str] | None = None) -> dict[str, Any]:
    model: dict[str, Any] = {"provider": "openai", "name": "gpt-4o", "baseUrl": url}
    if ref is not None:
        model["apiKeyFrom"] = ref
    return {"profiles": [{"name": "primary", "model": model}],
            "retry": {"maxAttempts": 1, "initialBackoffSeconds": 0.01}}  # fmt: skip


def test_the_platform_key_never_goes_to_a_base_url_a_tenant_chose(
    writer: Api, listener: Listener
) -> None:
    template = samples.template("acme")
    template["definition"]["modelPolicy"] = profile_policy(f"{listener.url}/v1",
                                                           {"env": "OPENAI_API_KEY"})  # fmt: skip
    refused(writer, template, "definition.modelPolicy.profiles[0].model.apiKeyFrom.env",
            "is sent only to https://api.openai.com/v1")  # fmt: skip
    agent = samples.agent("acme")
    agent["spec"]["overrides"] = {"modelPolicy": template["definition"]["modelPolicy"]}
    refused(writer, agent, "spec.overrides.modelPolicy.profiles[0].model.apiKeyFrom.env",
            "is sent only to")  # fmt: skip
    # Without apiKeyFrom the profile is accepted (a local model server), but the worker sends
    # a placeholder, never the platform key.
    clients = build_clients(profile_policy(f"{listener.url}/v1"), namespace="acme",
                            tenancy=tenancy_for_tests(), demo_fallback=False)  # fmt: skip
    request = ModelRequest([{"role": "user", "content": "hi"}], [], 5)
    with pytest.raises(PolicyError):
        complete_with_policy(clients, {"maxAttempts": 1}, request, deadline=time.monotonic() + 5)
    assert listener.requests, "the profile did call its base URL"
    assert PLATFORM_KEY not in listener.everything_sent()


def test_a_model_key_of_another_namespace_is_refused(writer: Api, listener: Listener) -> None:
    template = samples.template("globex")
    template["definition"]["modelPolicy"] = profile_policy(f"{listener.url}/v1",
                                                           {"env": "ACME_OPENAI_KEY"})  # fmt: skip
    refused(writer, template, "definition.modelPolicy.profiles[0].model.apiKeyFrom.env",
            "is not granted to namespace 'globex'")  # fmt: skip
    clients = build_clients(template["definition"]["modelPolicy"], namespace="globex",
                            tenancy=tenancy_for_tests(), demo_fallback=False)  # fmt: skip
    request = ModelRequest([{"role": "user", "content": "hi"}], [], 5)
    with pytest.raises(PolicyError, match="refused: environment variable ACME_OPENAI_KEY"):
        complete_with_policy(clients, {"maxAttempts": 1}, request, deadline=time.monotonic() + 5)
    assert listener.requests == []


# --- egress ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/computeMetadata/v1/", "link-local"),
        ("http://[fe80::1]/mcp", "link-local"),
        ("http://[::ffff:169.254.169.254]/mcp", "link-local"),
        ("http://10.1.2.3/mcp", "private address"),
        ("http://192.168.0.10/mcp", "private address"),
        ("http://0.0.0.0:8080/mcp", "not a unicast address"),
        ("file:///etc/passwd", "should match pattern"),  # the schema refuses it first
        ("http://user:pw@example.com/mcp", "credentials in the URL"),
    ],
)
def test_urls_outside_the_egress_policy_are_refused_at_apply(
    writer: Api, url: str, reason: str
) -> None:
    refused(writer, server_manifest("acme", url), "spec.url", reason)
    template = samples.template("acme")
    template["definition"]["modelPolicy"] = profile_policy(url)
    refused(writer, template, "definition.modelPolicy.profiles[0].model.baseUrl", reason)


def strict() -> TenancyPolicy:
    """A deployment's default: https and public addresses only (plus http here, so the
    listener can be named at all)."""
    return TenancyPolicy.from_settings(TenancySettings.model_validate(
        {"egress": {"allowedSchemes": ["http", "https"]}}))  # fmt: skip


def test_a_name_resolving_to_a_denied_address_is_refused_when_connecting(
    listener: Listener, db: Database
) -> None:
    """`localhost` passes the check of the URL as written (it is a name), but it resolves
    to loopback, which the deployment's policy denies: the connection is never made (the
    same check stops a name rebound to a metadata or private address)."""
    url = f"http://localhost:{listener.port}"
    clients = build_clients(profile_policy(f"{url}/v1"), namespace="acme", tenancy=strict(),
                            demo_fallback=False)  # fmt: skip
    request = ModelRequest([{"role": "user", "content": "hi"}], [], 5)
    with pytest.raises(PolicyError, match="egress denied: localhost resolves to a denied"):
        complete_with_policy(clients, {"maxAttempts": 3}, request, deadline=time.monotonic() + 5)
    source = MCPToolSource(db, strict())
    context = AgentContext("acme", "bot", "s1", {"mcpServerRefs": []}, {})
    result = source.call(context, "exfil.tool", {})
    assert result.is_error
    from talon.runtime.tools import mcp_client

    with pytest.raises(mcp_client.MCPUnavailable, match="egress denied"):
        mcp_client.list_tools(f"{url}/mcp", {}, 5, strict().egress)
    assert listener.requests == []


def test_a_redirect_to_a_denied_address_is_not_followed() -> None:
    """Neither model calls nor the MCP SDK follow redirects (a provider has no reason to send
    one); a client of the guarded transport that does follow them has each hop checked."""
    redirector = Listener(redirect_to="http://169.254.169.254/computeMetadata/v1/token")
    try:
        clients = build_clients(profile_policy(f"{redirector.url}/v1"), namespace="acme",
                                tenancy=tenancy_for_tests(), demo_fallback=False)  # fmt: skip
        request = ModelRequest([{"role": "user", "content": "hi"}], [], 5)
        with pytest.raises(PolicyError, match="HTTP 307"):
            complete_with_policy(clients, {"maxAttempts": 3}, request,
                                 deadline=time.monotonic() + 5)  # fmt: skip
        from talon.runtime.tools import mcp_client

        with pytest.raises(mcp_client.MCPUnavailable, match="not followed"):
            mcp_client.list_tools(f"{redirector.url}/mcp", {}, 5, tenancy_for_tests().egress)
        with (
            guarded_client(tenancy_for_tests().egress, follow_redirects=True) as http,
            pytest.raises(EgressDenied, match=r"169\.254\.169\.254 is link-local"),
        ):
            http.get(f"{redirector.url}/anything")
        assert len(redirector.requests) == 3  # one per client; no retry, no second hop
    finally:
        redirector.close()


def test_the_admin_token_is_not_needed_to_see_these_refusals(api: Api) -> None:
    """The same checks apply to an admin (the policy is the operator's, not a role's)."""
    api.ok("POST", "/v1/apply", json={"items": [samples.namespace("acme")]})
    response = api.post("/v1/apply", json={"items": [server_manifest(
        "acme", "http://169.254.169.254/", {"env": "TALON_ADMIN_TOKEN"})]})  # fmt: skip
    assert response.status_code == 422
    paths = {d["path"] for d in response.json()["error"]["details"]}
    assert any(p.endswith("spec.url") for p in paths)
    assert any(p.endswith("spec.headers[0].valueFrom.env") for p in paths)
    assert ADMIN_TOKEN not in response.text


# --- token lineage (issue 13, item 3) ------------------------------------------------------


def mint(api: Api, role: str, namespaces: list[str], **extra: Any) -> dict[str, Any]:
    body = {"name": f"{role}-{'-'.join(namespaces)}", "role": role, "namespaces": namespaces,
            **extra}  # fmt: skip
    return api.ok("POST", "/v1/tokens", 201, json=body)


def test_a_token_cannot_outlive_the_token_that_minted_it(api: Api) -> None:
    api.ok("POST", "/v1/apply", json={"items": [samples.namespace("acme")]})
    parent = mint(api, "admin", ["acme"], ttlSeconds=120)
    as_parent = api.as_token(parent["token"])
    child = mint(as_parent, "read", ["acme"])  # asks for no expiry: gets the parent's
    assert child["expiresAt"] == parent["expiresAt"]
    forever = {"name": "forever", "role": "read", "namespaces": ["acme"], "ttlSeconds": 3600}
    response = as_parent.post("/v1/tokens", json=forever)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["path"] == "ttlSeconds"
    shorter = mint(as_parent, "read", ["acme"], ttlSeconds=60)
    assert shorter["expiresAt"] <= parent["expiresAt"]


def test_revoking_a_token_revokes_its_whole_lineage_in_every_process(
    api: Api, settings: Any
) -> None:
    from talon.services import Services

    api.ok("POST", "/v1/apply", json={"items": [samples.namespace("acme")]})
    parent = mint(api, "admin", ["acme"])
    child = mint(api.as_token(parent["token"]), "admin", ["acme"])
    grandchild = mint(api.as_token(child["token"]), "read", ["acme"])
    other = Services.start(settings)  # another process's caches
    try:
        assert other.tokens.authenticate(grandchild["token"]).token_id == grandchild["id"]
        api.ok("DELETE", f"/v1/tokens/{parent['id']}")
        for token in (parent, child, grandchild):
            assert api.as_token(token["token"]).get("/v1/whoami").status_code == 401
            assert api.ok("GET", f"/v1/tokens/{token['id']}")["revokedAt"] is not None
        deadline = time.monotonic() + 5
        while True:
            try:
                other.tokens.authenticate(grandchild["token"])
            except Exception:
                break
            assert time.monotonic() < deadline, "the revocation never reached the other process"
            time.sleep(0.02)
    finally:
        other.close()
    # A revoked token cannot mint either.
    refused_mint = api.as_token(child["token"]).post(
        "/v1/tokens", json={"name": "late", "role": "read", "namespaces": ["acme"]}
    )
    assert refused_mint.status_code == 401


def test_a_scoped_admin_manages_the_tokens_within_its_scope(api: Api) -> None:
    api.ok("POST", "/v1/apply", json={"items": [samples.namespace("acme"),
                                                 samples.namespace("globex")]})  # fmt: skip
    scoped = mint(api, "admin", ["acme"])
    inside = mint(api, "read", ["acme"])  # minted by someone else, within acme
    wider = mint(api, "read", ["acme", "globex"])
    everywhere = mint(api, "read", ["*"])
    admin = api.as_token(scoped["token"])
    listed = {t["id"] for t in admin.ok("GET", "/v1/tokens")["items"]}
    assert inside["id"] in listed and scoped["id"] in listed
    assert wider["id"] not in listed and everywhere["id"] not in listed
    assert admin.ok("DELETE", f"/v1/tokens/{inside['id']}")["revokedAt"] is not None
    for hidden in (wider, everywhere):
        assert admin.delete(f"/v1/tokens/{hidden['id']}").status_code == 404
        assert admin.get(f"/v1/tokens/{hidden['id']}").status_code == 404
    assert api.as_token(wider["token"]).get("/v1/whoami").status_code == 200


# --- streams end when their token does (issue 13, item 4) -------------------------------------


def _follow_in_background(api: Api, path: str) -> tuple[threading.Thread, list[tuple[float, str]]]:
    """Read an SSE stream on a thread; record (time, raw event block) as each arrives."""
    received: list[tuple[float, str]] = []

    def run() -> None:
        with api.http.stream("GET", path, headers={"Last-Event-ID": "0"},
                             params={"heartbeat": "60"}, timeout=30) as reply:  # fmt: skip
            assert reply.status_code == 200
            block: list[str] = []
            for line in reply.iter_lines():
                if line:
                    block.append(line)
                elif block:
                    received.append((time.monotonic(), "\n".join(block)))
                    block = []

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, received


@pytest.mark.parametrize("revoke", ["the token", "its parent"])
def test_an_open_stream_ends_within_2_s_of_a_revocation(api: Api, revoke: str) -> None:
    items = [samples.namespace("acme"), samples.template("acme"), samples.agent("acme")]
    api.ok("POST", "/v1/apply", json={"items": items})
    base = "/v1/ns/acme/agents/bot/sessions"
    api.ok("POST", base, 201, json={"id": "s1"})
    parent = mint(api, "admin", ["acme"])
    reader = mint(api.as_token(parent["token"]), "read", ["acme"])
    thread, received = _follow_in_background(api.as_token(reader["token"]), f"{base}/s1/stream")
    deadline = time.monotonic() + 10
    while not any("retry:" in block or "session" in block for _, block in received):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    time.sleep(0.3)  # the stream is open and waiting
    api.ok("DELETE", f"/v1/tokens/{(reader if revoke == 'the token' else parent)['id']}")
    revoked_at = time.monotonic()
    api.ok("POST", f"{base}/s1/message", 202, json={"content": "secret plans"})
    thread.join(timeout=10)
    assert not thread.is_alive(), "the stream stayed open after its token was revoked"
    ended_at, last = received[-1]
    assert last.startswith("event: stream.end") and '"reason": "token_revoked"' in last
    assert ended_at - revoked_at < 2.0
    assert not any("secret plans" in block for _, block in received)


def test_an_open_stream_ends_when_its_token_expires(api: Api) -> None:
    items = [samples.namespace("acme"), samples.template("acme"), samples.agent("acme")]
    api.ok("POST", "/v1/apply", json={"items": items})
    base = "/v1/ns/acme/agents/bot/sessions"
    api.ok("POST", base, 201, json={"id": "s1"})
    expires = datetime.now(UTC) + timedelta(seconds=1.5)
    brief = api.ok("POST", "/v1/tokens", 201, json={
        "name": "brief", "role": "read", "namespaces": ["acme"],
        "expiresAt": expires.isoformat()})  # fmt: skip
    started = time.monotonic()
    thread, received = _follow_in_background(api.as_token(brief["token"]), f"{base}/s1/stream")
    thread.join(timeout=10)
    assert not thread.is_alive(), "the stream outlived its token"
    ended_at, last = received[-1]
    assert last.startswith("event: stream.end") and '"reason": "token_expired"' in last
    assert ended_at - started < 1.5 + 2.0


# --- large requests (issue 13, item 5) ---------------------------------------------------------


def _raw_post(port: int, head: str, chunks: list[bytes], *, chunked: bool) -> tuple[bytes, int]:
    """POST to the gateway over a raw socket, a chunk at a time; return the reply and how many
    chunks had been sent when it arrived."""
    import socket

    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(head.encode())
        sent = 0
        for chunk in chunks:
            sock.settimeout(0.05)
            try:
                reply = sock.recv(65536)
                if reply:
                    return reply, sent
            except TimeoutError:
                pass
            sock.settimeout(10)
            data = b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
            try:
                sock.sendall(data)
            except OSError:
                break  # the server closed the connection on us: its reply is waiting
            sent += 1
        sock.settimeout(10)
        return sock.recv(65536), sent
    finally:
        sock.close()


def test_the_ops_proxy_refuses_a_large_body_without_reading_it(
    gateway_url: str, listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    from talon import entrypoints

    monkeypatch.setenv("TALON_GATEWAY_OPS_MCP_UPSTREAM", listener.url)
    entrypoints.reset()
    port = int(gateway_url.rsplit(":", 1)[1])
    declared = ("POST /mcp/talon-ops HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Content-Length: 209715200\r\n\r\n")  # fmt: skip
    reply, sent = _raw_post(port, declared, [b"x" * 16384] * 200, chunked=False)
    assert reply.startswith(b"HTTP/1.1 413") and sent < 20  # refused on the declared size
    streamed = ("POST /mcp/talon-ops HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
    reply, sent = _raw_post(port, streamed, [b"x" * 16384] * 200, chunked=True)
    assert reply.startswith(b"HTTP/1.1 413")
    assert sent < 20, "the proxy read far past the 64 KiB limit before refusing"
    assert listener.requests == []
