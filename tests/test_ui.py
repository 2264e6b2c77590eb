"""The dashboard: its static files served by the real gateway at /ui/, and (with a real browser)
what a user does with it."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from conftest import ADMIN_TOKEN, ROOT, Api
from conftest import _Server as GatewayServer
from talon import entrypoints
from talon.cli.manifest_files import read_documents
from talon.examples.mcp_servers import RunningServer
from talon.store.local_postgres import free_port
from test_models import policy

DIST = ROOT / "shared" / "ui" / "dist"


# --- serving -------------------------------------------------------------------------------


def test_the_gateway_serves_the_built_app_at_ui(gateway_url: str) -> None:
    index = httpx.get(f"{gateway_url}/ui/")
    assert index.status_code == 200
    assert index.headers["Content-Type"] == "text/html; charset=utf-8"
    # index.html names the current asset hashes: the browser must revalidate it every time.
    assert index.headers["Cache-Control"] == "no-cache"
    assert "frame-ancestors 'none'" in index.headers["Content-Security-Policy"]
    assert index.text == (DIST / "index.html").read_text()
    assert '<div id="root"></div>' in index.text

    scripts = re.findall(r'src="(/ui/assets/[^"]+\.js)"', index.text)
    assert scripts, index.text
    script = httpx.get(f"{gateway_url}{scripts[0]}")
    assert script.status_code == 200
    assert script.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert script.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert script.headers["X-Content-Type-Options"] == "nosniff"
    # Conditional requests work, so a reload costs no body.
    again = httpx.get(
        f"{gateway_url}{scripts[0]}", headers={"If-None-Match": script.headers["ETag"]}
    )
    assert again.status_code == 304

    icon = httpx.get(f"{gateway_url}/ui/favicon.svg")
    assert icon.status_code == 200
    assert icon.headers["Content-Type"].startswith("image/svg+xml")


def test_a_deep_link_loads_the_app_and_the_router_draws_the_page(gateway_url: str) -> None:
    index = (DIST / "index.html").read_text()
    for path in (
        "/ui/ns/acme/agents/customer-support",
        "/ui/ns/acme/agents/customer-support/sessions/enterprise-renewals",
        "/ui/ns/acme/schedules/renewal-check",
        "/ui/ns/acme/graph",
        "/ui/tokens",
        "/ui/connect",
    ):
        reply = httpx.get(f"{gateway_url}{path}")
        assert reply.status_code == 200, path
        assert reply.text == index, path
        assert reply.headers["Cache-Control"] == "no-cache", path
    # Without the trailing slash, relative URLs would resolve against /: redirect.
    bare = httpx.get(f"{gateway_url}/ui")
    assert bare.status_code == 308 and bare.headers["Location"].endswith("/ui/")


def test_missing_files_and_other_methods_are_not_answered_with_the_app(gateway_url: str) -> None:
    # A stale hashed asset must not come back as HTML (the browser would run it as a script).
    missing = httpx.get(f"{gateway_url}/ui/assets/index-00000000.js")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{gateway_url}/ui/nothing-here.css").status_code == 404
    post = httpx.post(f"{gateway_url}/ui/", content=b"x")
    assert post.status_code == 405 and post.headers["Allow"] == "GET, HEAD"
    # No way out of the build folder.
    for path in ("/ui/../pyproject.toml", "/ui/%2e%2e/%2e%2e/pyproject.toml", "/ui/..%2fREADME.md"):
        reply = httpx.get(f"{gateway_url}{path}")
        assert "[project]" not in reply.text and "# Talon" not in reply.text, path
    # The API is untouched: its 404s stay JSON.
    assert httpx.get(f"{gateway_url}/v1/nothing").json()["error"]["code"] == "not_found"


# --- in a real browser -----------------------------------------------------------------------
# Debian's Chromium driven by Playwright, against the real gateway, PostgreSQL, a worker and
# the example MCP servers. The flags keep Chromium off the network (it would call Google).

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = ROOT / "tests" / "artifacts" / "ui"
AGENT = "/ui/ns/acme/agents/customer-support"
SESSIONS = "/v1/ns/acme/agents/customer-support/sessions"
ANSWER_PIECES = ["Acme has ", "one open ", "invoice, ", "in_1001, ", "due on ", "the 14th."]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: ./scripts/test installs it (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, gateway_url: str) -> Iterator[Page]:
    # A fresh context per test: its own localStorage, so no saved gateway leaks between tests.
    # Closed before the gateway's database goes (it depends on gateway_url), so no request of
    # the page's reaches a dropped database.
    # The viewer's zone differs from the example schedule's, so both are shown apart.
    context = browser.new_context(viewport={"width": 1280, "height": 800}, timezone_id="Asia/Tokyo")
    context.set_default_timeout(15_000)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert errors == [], errors


@pytest.fixture(scope="module")
def tool_servers() -> Iterator[dict[str, RunningServer]]:
    servers = {
        "stripe-readonly": RunningServer("stripe"),
        "hubspot-readonly": RunningServer("hubspot"),
    }
    yield servers
    for server in servers.values():
        server.close()


@pytest.fixture
def example(
    api: Api, tool_servers: dict[str, RunningServer], monkeypatch: pytest.MonkeyPatch
) -> Api:
    """The example manifests (as `talon dev` applies them), their MCP servers running."""
    monkeypatch.setenv("STRIPE_READONLY_AUTHORIZATION", "Bearer sk_test_readonly_123")
    monkeypatch.setenv("HUBSPOT_READONLY_AUTHORIZATION", "Bearer hubspot-token")
    documents = [d.body for d in read_documents([str(ROOT / "manifests")])]
    for document in documents:
        if document["kind"] == "MCPServer":
            document["spec"]["url"] = tool_servers[document["metadata"]["name"]].url
    api.ok("POST", "/v1/apply", json={"items": documents})
    return api


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def connect(
    page: Page, gateway_url: str, token: str, name: str = "local", other: str | None = None
) -> None:
    """Connect the dashboard served by `gateway_url` to itself, or to the `other` gateway."""
    page.goto(f"{gateway_url}/ui/connect")
    page.get_by_label("Name").fill(name)
    expect(page.get_by_label("Gateway URL")).to_have_value(gateway_url)  # its own origin
    if other is not None:
        page.get_by_label("Gateway URL").fill(other)
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Connect").click()
    expect(page.get_by_role("group", name="Identity")).to_be_visible()


def test_connect_from_a_deep_link_and_browse_the_example(
    page: Page, gateway_url: str, example: Api
) -> None:
    # No gateway saved yet: the deep link shows the connect form, then the page it named.
    page.goto(f"{gateway_url}{AGENT}")
    expect(page.get_by_role("heading", name="Connect to a Talon gateway")).to_be_visible()
    page.get_by_label("Token").fill("wrong-token")
    page.get_by_role("button", name="Connect").click()
    expect(page.get_by_role("alert")).to_contain_text("token")
    page.get_by_label("Token").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Connect").click()
    expect(page.get_by_role("heading", name="Agent customer-support")).to_be_visible()
    assert page.url == f"{gateway_url}{AGENT}"
    identity = page.get_by_role("group", name="Identity")
    expect(identity).to_contain_text("admin")
    expect(identity).to_contain_text(gateway_url)
    expect(page.get_by_role("combobox", name="Namespace")).to_have_value("acme")
    # The token is in this gateway's saved entry, never in the URL.
    saved = page.evaluate("localStorage.getItem('talon.gateways.v1')")
    assert ADMIN_TOKEN in saved and ADMIN_TOKEN not in page.url

    related = page.get_by_role("region", name="Related")
    expect(related.get_by_text("Resolved")).to_have_count(0)  # the phase is in the heading
    expect(page.get_by_role("heading", name="Agent customer-support")).to_contain_text("Resolved")
    for link in ("customer-support-stripe", "customer-support-hubspot", "stripe-readonly",
                 "hubspot-readonly", "renewal-check"):  # fmt: skip
        expect(related.get_by_role("link", name=link, exact=True)).to_be_visible()
    tools = page.get_by_role("region", name="Tools")
    expect(tools).to_contain_text("skill.renewal-outreach")
    expect(tools).to_contain_text("allow get_*, list_*, search_*")
    expect(page.get_by_role("region", name="YAML")).to_contain_text("templateRef: customer-support")
    screenshot(page, "agent")

    # Links lead on: agent -> template -> its agents; a schedule shows both time zones.
    related.get_by_role("link", name="customer-support", exact=True).first.click()
    expect(page.get_by_role("heading", name="Template customer-support")).to_be_visible()
    assert page.url.endswith("/ui/ns/acme/agent-templates/customer-support")
    page.goto(f"{gateway_url}/ui/ns/acme/schedules/renewal-check")
    schedule = page.get_by_role("region", name="Schedule")
    expect(schedule).to_contain_text("Next fire (America/Los_Angeles)")
    expect(schedule.get_by_role("link", name="enterprise-renewals")).to_be_visible()
    # Run now wakes the named session (no worker here: the turn stays queued); the fire is
    # listed with its reason, outcome and a link to the turn it woke.
    page.get_by_role("button", name="Run now").click()
    expect(schedule.get_by_role("status")).to_have_text(
        "Fired: queued in session enterprise-renewals"
    )
    fires = page.get_by_role("region", name="Last fires")
    expect(fires.get_by_role("row", name=re.compile("run queued"))).to_have_count(1)
    expect(fires.get_by_role("link", name=re.compile(r"enterprise-renewals \/ "))).to_be_visible()
    page.get_by_role("button", name="Disable").click()
    expect(page.get_by_role("button", name="Enable")).to_be_visible()
    assert example.ok("GET", "/v1/ns/acme/schedules/renewal-check")["spec"]["enabled"] is False
    page.get_by_role("button", name="Enable").click()
    expect(page.get_by_role("button", name="Disable")).to_be_visible()
    screenshot(page, "schedule")
    fires.get_by_role("link", name=re.compile(r"enterprise-renewals \/ ")).click()
    expect(page.get_by_role("heading", name="Session enterprise-renewals")).to_be_visible()
    expect(page.locator(".msg.user .text")).to_contain_text("Review accounts renewing")

    # The side navigation lists every kind; bindings show their server and subjects.
    page.goto(f"{gateway_url}/ui/ns/acme/schedules")
    page.get_by_role("navigation", name="Resources").get_by_role("link", name="Bindings").click()
    row = page.get_by_role("row", name=re.compile("customer-support-hubspot"))
    expect(row).to_contain_text("labels app=customer-support")
    screenshot(page, "bindings")


def test_every_kind_has_a_deep_link_with_its_status_yaml_and_related_objects(
    page: Page, gateway_url: str, example: Api
) -> None:
    connect(page, gateway_url, ADMIN_TOKEN)
    pages = {
        "agent-templates/customer-support": ("Template customer-support", "Related",
                                             ["customer-support", "stripe-readonly"]),
        "knowledge/renewal-playbook": ("Knowledge renewal-playbook", "Document", []),
        "mcp-servers/stripe-readonly": ("MCP server stripe-readonly", "Related",
                                        ["customer-support-stripe", "customer-support"]),
        "mcp-bindings/customer-support-hubspot": ("MCP binding customer-support-hubspot",
                                                  "Related",
                                                  ["hubspot-readonly", "customer-support"]),
        "schedules/renewal-check": ("Schedule renewal-check", "Schedule",
                                    ["customer-support", "enterprise-renewals"]),
    }  # fmt: skip
    for path, (heading, region, links) in pages.items():
        page.goto(f"{gateway_url}/ui/ns/acme/{path}")
        expect(page.get_by_role("heading", name=heading)).to_be_visible()
        expect(page.get_by_role("region", name="Summary")).to_contain_text("Version")
        kind = example.ok("GET", f"/v1/ns/acme/{path}")["kind"]
        expect(page.get_by_role("region", name="YAML")).to_contain_text(f"kind: {kind}")
        related = page.get_by_role("region", name=region)
        for name in links:
            expect(related.get_by_role("link", name=name, exact=True).first).to_be_visible()
    # A named session is created from the agent page, which opens it.
    page.goto(f"{gateway_url}{AGENT}")
    page.get_by_label("Session id").fill("q4-review")
    page.get_by_role("button", name="Create session").click()
    expect(page.get_by_role("heading", name="Session q4-review")).to_be_visible()
    assert page.url == f"{gateway_url}{AGENT}/sessions/q4-review"
    assert example.ok("GET", f"{SESSIONS}/q4-review")["id"] == "q4-review"


def test_the_agent_page_names_each_effective_tool_with_its_source_and_binding(
    page: Page, gateway_url: str, example: Api
) -> None:
    connect(page, gateway_url, ADMIN_TOKEN)
    page.goto(f"{gateway_url}{AGENT}")
    effective = page.get_by_role("table", name="Effective tools")
    listed = effective.get_by_role("row", name=re.compile(r"stripe-readonly\.list_invoices"))
    expect(listed).to_contain_text("MCP server stripe-readonly")
    expect(listed.get_by_role("link", name="customer-support-stripe")).to_be_visible()
    search = effective.get_by_role("row", name=re.compile(r"hubspot-readonly\.search_companies"))
    expect(search.get_by_role("link", name="customer-support-hubspot")).to_be_visible()
    builtin = effective.get_by_role("row", name=re.compile(r"talon\.current_time"))
    expect(builtin).to_contain_text("every agent")
    skill = effective.get_by_role("row", name=re.compile(r"skill\.renewal-outreach"))
    expect(skill).to_contain_text("skill renewal-outreach")
    expect(effective).not_to_contain_text("refund_invoice")  # no binding permits it
    servers = page.get_by_role("table", name="MCP servers of this agent")
    stripe = servers.get_by_role("row", name=re.compile("stripe-readonly"))
    expect(stripe).to_contain_text("3 tools offered")
    expect(stripe).to_contain_text("refund_invoice")  # withheld, and shown as such
    expect(stripe).to_contain_text("allow get_*, list_*, search_*, read-only")
    screenshot(page, "agent-tools")
    # A server that goes away is reported with the reason; the other tools stay listed.
    down = {"url": f"http://127.0.0.1:{free_port()}/mcp"}
    example.ok("PATCH", "/v1/ns/acme/mcp-servers/hubspot-readonly", json={"spec": down})
    page.get_by_role("button", name="Refresh tools").click()
    hubspot = servers.get_by_role("row", name=re.compile("hubspot-readonly"))
    expect(hubspot).to_contain_text("unreachable")
    expect(effective.get_by_role("row", name=re.compile(r"hubspot-readonly\."))).to_have_count(0)
    expect(listed).to_be_visible()


def test_a_schedule_lists_more_than_its_last_five_fires_in_both_zones(
    page: Page, gateway_url: str, example: Api
) -> None:
    run = "/v1/ns/acme/schedules/renewal-check/run"
    fired: list[dict[str, Any]] = []
    while len(fired) < 7:  # fire slots are whole seconds: a second run within one is a no-op
        result = example.ok("POST", run, 202)
        if result["claimed"]:
            fired.append(result)
        else:
            time.sleep(0.2)
    connect(page, gateway_url, ADMIN_TOKEN)
    page.goto(f"{gateway_url}/ui/ns/acme/schedules/renewal-check")
    schedule = page.get_by_role("region", name="Schedule")
    # The next fire in the schedule's zone and in the viewer's (the browser is in Tokyo).
    zoned = schedule.locator("dt", has_text="Next fire (America/Los_Angeles)").locator("+ dd")
    yours = schedule.locator("dt", has_text="Next fire (yours, Asia/Tokyo)").locator("+ dd")
    expect(zoned.locator("time")).to_be_visible()
    expect(yours.locator("time")).to_have_attribute(
        "datetime", zoned.locator("time").get_attribute("datetime") or ""
    )
    assert zoned.inner_text() != yours.inner_text()
    fires = page.get_by_role("region", name="Last fires")
    expect(fires.get_by_role("row", name=re.compile("run"))).to_have_count(7)
    expect(fires).to_contain_text("7 most recent fires, newest first.")
    links = fires.get_by_role("link", name=re.compile(r"enterprise-renewals \/ "))
    expect(links).to_have_count(7)
    oldest = fired[0]["turnId"]
    expect(links.last).to_have_attribute("href", re.compile(f"#turn-{oldest}$"))
    screenshot(page, "schedule-fires")
    links.last.click()
    expect(page.get_by_role("heading", name="Session enterprise-renewals")).to_be_visible()
    assert page.url.endswith(f"#turn-{oldest}")


def test_an_admin_creates_a_token_sees_its_secret_once_and_revokes_it(
    page: Page, gateway_url: str, example: Api
) -> None:
    connect(page, gateway_url, ADMIN_TOKEN)
    page.get_by_role("link", name="Tokens").click()
    expect(page.get_by_role("heading", name="Tokens", exact=True)).to_be_visible()
    assert page.url == f"{gateway_url}/ui/tokens"
    form = page.get_by_role("form", name="Create a token")
    form.get_by_label("Token name").fill("ci-reader")
    form.get_by_label("Role").select_option("read")
    form.get_by_label("Expires after").select_option(label="1 day")
    form.get_by_label("acme", exact=True).check()
    form.get_by_role("button", name="Create token").click()
    created = page.get_by_role("status", name="New token")
    secret = created.get_by_label("Token secret").inner_text()
    assert secret.startswith("tln_")
    reader = example.as_token(secret)
    who = reader.ok("GET", "/v1/whoami")
    assert (who["name"], who["role"], who["namespaces"]) == ("ci-reader", "read", ["acme"])
    expires = example.ok("GET", f"/v1/tokens/{who['tokenId']}")["expiresAt"]
    lifetime = datetime.fromisoformat(expires.replace("Z", "+00:00")) - datetime.now(UTC)
    assert timedelta(hours=23, minutes=55) < lifetime <= timedelta(days=1)
    row = page.get_by_role("table", name="Tokens").get_by_role("row", name=re.compile("ci-reader"))
    for text in ("read", "acme", "active", who["tokenId"]):
        expect(row).to_contain_text(text)
    expect(row).not_to_contain_text(secret)
    screenshot(page, "tokens")
    # Shown once: gone when dismissed, and nowhere after a reload.
    created.get_by_role("button", name="Done").click()
    expect(page.get_by_text(secret)).to_have_count(0)
    page.reload()
    expect(row).to_contain_text("active")
    assert secret not in page.content()
    # Revoking asks first, then the token is refused.
    row.get_by_role("button", name="Revoke ci-reader").click()
    expect(row.get_by_role("button", name="Keep")).to_be_focused()  # Enter would not revoke
    row.get_by_role("button", name="Confirm revoke").click()
    expect(row).to_contain_text("revoked")
    assert reader.get("/v1/whoami").status_code == 401
    reader.http.close()


def test_usable_at_phone_width_and_by_keyboard(page: Page, gateway_url: str, example: Api) -> None:
    connect(page, gateway_url, ADMIN_TOKEN)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{gateway_url}{AGENT}")
    expect(page.get_by_role("heading", name="Agent customer-support")).to_be_visible()
    expect(page.get_by_role("table", name="Effective tools")).to_be_visible()  # the widest part
    # Nothing wider than the phone: no sideways scrolling of the page.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, "agent-phone")
    # The other main pages fit too (wide tables scroll inside their own box).
    example.ok("POST", SESSIONS, 201, json={"id": "phone"})
    for path in (f"{AGENT}/sessions/phone", "/ui/tokens", "/ui/ns/acme/schedules/renewal-check",
                 "/ui/ns/acme/graph", "/ui/ns/acme/apply"):  # fmt: skip
        page.goto(f"{gateway_url}{path}")
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, path
    page.goto(f"{gateway_url}{AGENT}")
    expect(page.get_by_role("heading", name="Agent customer-support")).to_be_visible()
    # The first Tab reaches the skip link, which moves focus to the content.
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()


def _use_model_server(api: Api, url: str) -> None:
    overrides = {"overrides": {"modelPolicy": policy(url, "primary")}}
    api.ok("PATCH", "/v1/ns/acme/agents/customer-support", json={"spec": overrides})


def _session_page(page: Page, gateway_url: str, session: str) -> None:
    page.goto(f"{gateway_url}{AGENT}/sessions/{session}")
    expect(page.get_by_role("status", name="Stream status")).to_contain_text("Live")


def test_chat_a_turn_and_watch_its_steps_arrive_before_it_ends(
    page: Page, gateway_url: str, example: Api, model_server: Any, start_worker: Any
) -> None:
    # The agent's model is the scripted server: a tool call to the example Stripe server,
    # then an answer streamed slowly, so the turn is visibly running while steps arrive.
    _use_model_server(example, model_server.url)
    model_server.add(
        {"tool_calls": [{"name": "stripe-readonly_list_invoices",
                         "arguments": {"customer_id": "cus_acme_001"}}]},
        {"pieces": ANSWER_PIECES, "chunk_delay": 0.4},
    )  # fmt: skip
    start_worker()
    example.ok("POST", SESSIONS, 201, json={"id": "enterprise-renewals"})
    connect(page, gateway_url, ADMIN_TOKEN)
    _session_page(page, gateway_url, "enterprise-renewals")

    page.get_by_label("Message", exact=True).fill("Which invoices are open for Acme?")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_label("Message", exact=True)).to_have_value("")
    tool_step = page.locator('[data-step="call-stripe-readonly.list_invoices"]')
    expect(tool_step).to_have_attribute("data-state", "completed")
    # The tool step is done while the turn still runs: steps arrive live, not at the end,
    # with the call's arguments and result from the stream's step events.
    expect(tool_step.get_by_test_id("tool-arguments")).to_contain_text(
        '"customer_id": "cus_acme_001"'
    )
    expect(tool_step.get_by_test_id("tool-result")).to_contain_text("in_1001")
    # ...not from the history: the turn's messages are not written yet.
    written = example.ok("GET", f"{SESSIONS}/enterprise-renewals/messages")["items"]
    assert [m["role"] for m in written] == ["user"]
    turn_state = page.get_by_test_id("turn-state")
    assert turn_state.inner_text() == "running"
    # The answer streams in pieces (message.delta) before the turn completes.
    partial = page.get_by_label("Answer so far")
    expect(partial).to_contain_text(ANSWER_PIECES[0])
    assert turn_state.inner_text() == "running"
    assert "".join(ANSWER_PIECES) not in partial.inner_text()  # not the whole answer yet
    screenshot(page, "session-streaming")
    expect(turn_state).to_have_text("completed", timeout=20_000)
    answer = "".join(ANSWER_PIECES)
    expect(page.locator(".msg.assistant .text").last).to_have_text(answer)
    steps = page.locator("[data-step]")
    expect(steps).to_have_count(5)
    assert [s.get_attribute("data-step") for s in steps.all()] == [
        "load-knowledge", "call-model", "call-stripe-readonly.list_invoices", "call-model",
        "write-next-message",
    ]  # fmt: skip
    expect(page.locator('[data-step="call-model"]').first).to_contain_text(
        "primary/openai:model-primary"
    )
    # The knowledge step names the documents it used.
    expect(page.locator('[data-step="load-knowledge"]')).to_contain_text(
        "documents renewal-playbook"
    )
    # Each step shows how long it took.
    expect(tool_step).to_contain_text(re.compile(r"done\s*\d+(\.\d+)? m?s"))
    # Once the turn is written, the whole call and result come from the history.
    expect(tool_step).to_contain_text('"customer_id": "cus_acme_001"')
    expect(tool_step).to_contain_text("in_1001")
    screenshot(page, "session")

    # A reload shows the same conversation from the API (history, not local state).
    page.reload()
    expect(page.locator(".msg.assistant .text").last).to_have_text(answer)
    page.get_by_role("button", name="Show steps").click()  # a past turn's steps, on demand
    expect(tool_step).to_have_attribute("data-state", "completed")
    expect(steps).to_have_count(5)


def test_cancel_a_running_turn(
    page: Page, gateway_url: str, example: Api, model_server: Any, start_worker: Any
) -> None:
    _use_model_server(example, model_server.url)
    model_server.add({"pieces": ["Thinking ", "very ", "slowly ", "..."], "chunk_delay": 1.0})
    start_worker()
    example.ok("POST", SESSIONS, 201, json={"id": "slow"})
    connect(page, gateway_url, ADMIN_TOKEN)
    _session_page(page, gateway_url, "slow")
    page.get_by_label("Message", exact=True).fill("Take your time.")
    page.get_by_label("Message", exact=True).press("Enter")  # Enter sends
    expect(page.get_by_test_id("turn-state")).to_have_text("running")
    page.get_by_role("button", name="Cancel turn").click()
    expect(page.get_by_test_id("turn-state")).to_have_text("cancelled")
    expect(page.get_by_role("button", name="Cancel turn")).to_have_count(0)


class DroppingProxy:
    """A TCP proxy in front of the gateway that can cut every open connection and refuse new
    ones until restored: a real network drop, as the browser sees it."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.down = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self._sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, target), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def drop(self) -> None:
        self.down = True
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def restore(self) -> None:
        self.down = False

    def close(self) -> None:
        self.drop()
        self._listener.close()


def test_a_dropped_stream_resumes_from_the_last_event_with_a_visible_indicator(
    page: Page, gateway_url: str, example: Api, model_server: Any, start_worker: Any
) -> None:
    _use_model_server(example, model_server.url)
    model_server.add({"content": "Answered while you were away."})
    start_worker()
    example.ok("POST", SESSIONS, 201, json={"id": "flaky"})
    proxy = DroppingProxy(int(gateway_url.rsplit(":", 1)[1]))
    try:
        connect(page, proxy.url, ADMIN_TOKEN)  # the UI and its API calls go through the proxy
        _session_page(page, proxy.url, "flaky")
        status = page.get_by_role("status", name="Stream status")
        proxy.drop()  # the open stream breaks; reconnecting fails meanwhile
        expect(status).to_have_attribute("data-state", "reconnecting")
        expect(status).to_contain_text("resuming after event 0")
        # A turn runs to its end while the browser is cut off.
        accepted = example.ok(
            "POST", f"{SESSIONS}/flaky/message", 202, json={"content": "Anything new?"}
        )
        turn = f"{SESSIONS}/flaky/turns/{accepted['turnId']}"
        deadline = time.monotonic() + 20
        while example.ok("GET", turn)["state"] != "completed":
            assert time.monotonic() < deadline, "the turn did not complete"
            time.sleep(0.1)
        screenshot(page, "session-reconnecting")
        proxy.restore()
        # Back: the stream resumes after the last event it had and replays what it missed.
        expect(status).to_contain_text("Live (resumed after event 0)", timeout=15_000)
        expect(page.locator(".msg.user .text")).to_have_text("Anything new?")
        expect(page.locator(".msg.assistant .text")).to_have_text("Answered while you were away.")
        expect(page.get_by_test_id("turn-state")).to_have_text("completed")
        expect(page.locator("[data-step]")).to_have_count(3)  # knowledge, model, write
    finally:
        page.close()
        proxy.close()


def test_a_read_only_token_sees_no_write_controls(
    page: Page, gateway_url: str, example: Api
) -> None:
    example.ok("POST", SESSIONS, 201, json={"id": "enterprise-renewals"})
    reader = example.token("read", ["acme"])
    connect(page, gateway_url, reader, name="reader")
    expect(page.get_by_role("group", name="Identity")).to_contain_text("read")
    expect(page.get_by_role("group", name="Identity")).to_contain_text("ns: acme")
    page.goto(f"{gateway_url}{AGENT}")
    expect(page.get_by_role("region", name="Sessions").get_by_role("link")).to_have_text(
        "enterprise-renewals"
    )
    expect(page.get_by_role("button", name="Create session")).to_have_count(0)
    expect(page.get_by_role("link", name="Tokens")).to_have_count(0)
    expect(
        page.get_by_role("navigation", name="Resources").get_by_role("link", name="Apply")
    ).to_have_count(0)
    _session_page(page, gateway_url, "enterprise-renewals")
    expect(page.get_by_label("Message", exact=True)).to_have_count(0)
    expect(page.get_by_role("button", name="Send")).to_have_count(0)
    page.goto(f"{gateway_url}/ui/ns/acme/schedules/renewal-check")
    expect(page.get_by_role("region", name="Schedule")).to_contain_text("customer-support")
    expect(page.get_by_role("button", name="Run now")).to_have_count(0)
    expect(page.get_by_role("button", name="Disable")).to_have_count(0)
    screenshot(page, "read-only-schedule")
    page.goto(f"{gateway_url}/ui/tokens")
    expect(page.get_by_text("Token management needs an admin token")).to_be_visible()
    expect(page.get_by_role("button", name="Create token")).to_have_count(0)
    expect(page.get_by_role("button", name=re.compile("^Revoke"))).to_have_count(0)


def test_a_second_gateway_can_be_added_switched_and_removed(
    page: Page, gateway_url: str, example: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A second gateway on another origin, which allows this dashboard's origin (CORS).
    monkeypatch.setenv("TALON_GATEWAY_ALLOWED_ORIGINS", gateway_url)
    entrypoints.reset()
    second = GatewayServer()
    try:
        writer = example.token("write", ["acme"])
        connect(page, gateway_url, ADMIN_TOKEN, name="local-admin")
        connect(page, gateway_url, writer, name="second", other=second.url)
        gateway = page.get_by_role("combobox", name="Gateway")
        identity = page.get_by_role("group", name="Identity")
        expect(identity).to_contain_text(second.url)
        expect(identity).to_contain_text("write")
        expect(gateway.locator("option")).to_have_text(["local-admin", "second"])
        # Its pages load from the other origin.
        page.goto(f"{gateway_url}{AGENT}")
        expect(page.get_by_role("heading", name="Agent customer-support")).to_be_visible()
        expect(page.get_by_role("group", name="Identity")).to_contain_text(second.url)
        gateway.select_option(label="local-admin")
        expect(identity).to_contain_text("admin")
        expect(identity).to_contain_text(gateway_url)
        # The choice survives a reload (localStorage), and each gateway keeps its own token.
        page.reload()
        expect(page.get_by_role("group", name="Identity")).to_contain_text("admin")
        page.goto(f"{gateway_url}/ui/connect")
        saved = page.get_by_role("region", name="Saved gateways")
        expect(saved.get_by_role("listitem")).to_have_count(2)
        screenshot(page, "gateways")
        saved.get_by_role("button", name="Use gateway second").click()
        expect(page.get_by_role("group", name="Identity")).to_contain_text("write")
        page.goto(f"{gateway_url}/ui/connect")
        page.get_by_role("button", name="Remove gateway second").click()
        remaining = page.get_by_role("region", name="Saved gateways").get_by_role("listitem")
        expect(remaining).to_have_count(1)
        stored = page.evaluate("localStorage.getItem('talon.gateways.v1')")
        assert writer not in stored  # removing a gateway forgets its token
    finally:
        page.close()
        second.close()


def test_the_graph_shows_references_and_a_failed_agent_at_a_glance(
    page: Page, gateway_url: str, example: Api
) -> None:
    connect(page, gateway_url, ADMIN_TOKEN)
    page.goto(f"{gateway_url}/ui/ns/acme/graph")
    graph = page.get_by_role("img", name="Object graph of acme")
    expect(graph).to_be_visible()
    references = page.get_by_role("table", name="References")
    for source, label, target in (
        ("customer-support", "template", "customer-support"),
        ("customer-support-hubspot", "covers agent", "customer-support"),
        ("renewal-check", "wakes", "customer-support"),
        ("customer-support-stripe", "binds server", "stripe-readonly"),
    ):
        row = references.get_by_role("row").filter(has_text=label).filter(has_text=source)
        expect(row.first).to_contain_text(target)
    expect(page.get_by_text("failed agent")).to_have_count(0)
    screenshot(page, "graph")
    # A template change that breaks the agent: it turns Failed, and the graph says so.
    definition = example.ok("GET", "/v1/ns/acme/agent-templates/customer-support")["definition"]
    definition["customSpec"]["features"].append({"name": "region", "required": True})
    example.ok(
        "PATCH", "/v1/ns/acme/agent-templates/customer-support", json={"definition": definition}
    )
    page.reload()
    expect(page.get_by_role("status")).to_contain_text("1 failed agent: customer-support")
    failed = graph.get_by_role("link", name="Agent customer-support (Failed)")
    expect(failed).to_be_visible()
    screenshot(page, "graph-failed")
    # Clicking a node opens the object (keyboard: focus it and press Enter).
    failed.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Agent customer-support")).to_contain_text("Failed")


def test_apply_shows_a_dry_run_with_field_changes_then_applies(
    page: Page, gateway_url: str, example: Api
) -> None:
    connect(page, gateway_url, ADMIN_TOKEN)
    page.goto(f"{gateway_url}/ui/ns/acme/apply")
    schedule = (ROOT / "manifests" / "50-schedule.yaml").read_text()
    changed = schedule.replace('cron: "0 14 * * 1-5"', 'cron: "0 15 * * 1-5"')
    assert changed != schedule
    knowledge = (
        "apiVersion: talon.dev/v1alpha1\nkind: Knowledge\nmetadata: {name: faq, namespace: acme}\n"
        "spec: {title: FAQ, contentType: text/markdown, content: '# FAQ'}\n"
    )
    page.get_by_label("Manifests (YAML)").fill(f"{changed}---\n{knowledge}")
    page.get_by_role("button", name="Dry run").click()
    result = page.get_by_role("region", name="Result")
    expect(result).to_contain_text("Dry run: nothing was written")
    expect(result.get_by_role("row", name=re.compile("Schedule renewal-check"))).to_contain_text(
        'configuredspec.cron: "0 14 * * 1-5" → "0 15 * * 1-5"'
    )
    expect(result.get_by_role("row", name=re.compile("Knowledge faq"))).to_contain_text("created")
    screenshot(page, "apply-dry-run")
    example.ok("GET", "/v1/ns/acme/knowledge/faq", expect=404)  # nothing written
    page.get_by_role("button", name="Apply").click()
    expect(result).to_contain_text("Applied")
    applied = example.ok("GET", "/v1/ns/acme/schedules/renewal-check")
    assert applied["spec"]["cron"] == "0 15 * * 1-5"
    # A bad manifest is refused whole, with the offending path.
    page.get_by_label("Manifests (YAML)").fill(knowledge.replace("title: FAQ, ", "titel: FAQ, "))
    page.get_by_role("button", name="Dry run").click()
    expect(page.get_by_role("alert")).to_contain_text("items[0].spec.titel")


def test_the_ui_unit_tests_pass() -> None:
    # The SSE parser, stream resumption and gateway storage, tested without a browser (Vitest).
    ui = ROOT / "shared" / "ui"
    vitest = ui / "node_modules" / ".bin" / "vitest"  # installed by npm ci (scripts/setup.sh)
    assert vitest.exists(), "run ./scripts/test, which installs the dashboard's packages"
    result = subprocess.run(
        [str(vitest), "run"], cwd=ui, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
