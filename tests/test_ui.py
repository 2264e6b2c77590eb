"""The dashboard: its static files served by the real gateway at /ui/, and (with a real browser)
what a user does with it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from conftest import ADMIN_TOKEN, ROOT, Api
from talon.cli.manifest_files import read_documents
from talon.examples.mcp_servers import RunningServer

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
def page(browser: Browser) -> Iterator[Page]:
    # A fresh context per test: its own localStorage, so no saved gateway leaks between tests.
    context = browser.new_context(viewport={"width": 1280, "height": 800})
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


def connect(page: Page, gateway_url: str, token: str, name: str = "local") -> None:
    page.goto(f"{gateway_url}/ui/connect")
    page.get_by_label("Name").fill(name)
    expect(page.get_by_label("Gateway URL")).to_have_value(gateway_url)  # its own origin
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
    expect(page.get_by_role("button", name="Run now")).to_be_visible()
    screenshot(page, "schedule")

    # The side navigation lists every kind; bindings show their server and subjects.
    page.get_by_role("navigation", name="Resources").get_by_role("link", name="Bindings").click()
    row = page.get_by_role("row", name=re.compile("customer-support-hubspot"))
    expect(row).to_contain_text("labels app=customer-support")
    screenshot(page, "bindings")


def test_usable_at_phone_width_and_by_keyboard(page: Page, gateway_url: str, example: Api) -> None:
    connect(page, gateway_url, ADMIN_TOKEN)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{gateway_url}{AGENT}")
    expect(page.get_by_role("heading", name="Agent customer-support")).to_be_visible()
    # Nothing wider than the phone: no sideways scrolling of the page.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, "agent-phone")
    # The first Tab reaches the skip link, which moves focus to the content.
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
