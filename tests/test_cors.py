"""Cross-origin calls to the API from the origins `gateway.allowedOrigins` lists (a dashboard
hosted elsewhere, or one gateway's dashboard that saved another gateway); none by default."""

from __future__ import annotations

import httpx
import pytest

from conftest import ADMIN_TOKEN, TEST_CONFIG
from talon import entrypoints
from talon.config import load_settings
from talon.errors import ConfigError

DASHBOARD = "http://127.0.0.1:5173"


@pytest.fixture
def allowing(gateway_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TALON_GATEWAY_ALLOWED_ORIGINS", f"{DASHBOARD}, https://ops.example.com")
    entrypoints.reset()  # the gateway reads its settings when it is built
    return gateway_url


def test_an_allowed_origin_may_call_the_api_with_a_bearer_token(allowing: str) -> None:
    preflight = httpx.options(
        f"{allowing}/v1/ns/acme/agents/a/sessions/s/stream",
        headers={
            "Origin": DASHBOARD,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization,last-event-id",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == DASHBOARD
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert {"authorization", "last-event-id", "idempotency-key", "content-type"} <= {
        h.strip() for h in allowed.split(",")
    }
    assert "PATCH" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Access-Control-Allow-Credentials" not in preflight.headers  # tokens, not cookies

    reply = httpx.get(
        f"{allowing}/v1/whoami",
        headers={"Origin": DASHBOARD, "Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert reply.status_code == 200
    assert reply.headers["Access-Control-Allow-Origin"] == DASHBOARD
    exposed = reply.headers["Access-Control-Expose-Headers"]
    assert "X-Request-Id" in exposed
    # What a message posted for its events answers besides them: a page may read it.
    assert {"Talon-Turn-Id", "Talon-Stream-From"} <= set(exposed.split(", "))
    assert "Origin" in reply.headers["Vary"]
    # Errors carry the header too, so the page can read the error's message.
    refused = httpx.get(f"{allowing}/v1/whoami", headers={"Origin": DASHBOARD})
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == DASHBOARD


def test_other_origins_get_no_cors_headers(allowing: str) -> None:
    headers = {"Origin": "https://evil.example.com", "Access-Control-Request-Method": "GET"}
    preflight = httpx.options(f"{allowing}/v1/whoami", headers=headers)
    assert preflight.status_code == 405  # not a preflight we answer: the route's own 405
    assert "Access-Control-Allow-Origin" not in preflight.headers
    reply = httpx.get(
        f"{allowing}/v1/whoami",
        headers={"Origin": "https://evil.example.com", "Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert "Access-Control-Allow-Origin" not in reply.headers


def test_by_default_no_origin_is_allowed(gateway_url: str) -> None:
    reply = httpx.get(
        f"{gateway_url}/v1/whoami",
        headers={"Origin": DASHBOARD, "Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert reply.status_code == 200
    assert "Access-Control-Allow-Origin" not in reply.headers


def test_an_allowed_origin_must_be_an_origin() -> None:
    for bad in ("*", "http://host/path", "ftp://host", "host:8080"):
        environ = {"TALON_GATEWAY_ALLOWED_ORIGINS": bad}
        with pytest.raises(ConfigError, match=r"gateway\.allowedOrigins"):
            load_settings(TEST_CONFIG, environ=environ)
