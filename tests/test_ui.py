"""The dashboard: its static files served by the real gateway at /ui/, and (with a real browser)
what a user does with it."""

from __future__ import annotations

import re

import httpx

from conftest import ROOT

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
