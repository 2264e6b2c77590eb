"""Secrets with bytes outside ASCII, at every entry point that compares one (the gateway, the
talon-ops MCP server, the dispatch push endpoint, the scheduler callback): a 401 with a JSON
error body, never a 500. Sent as raw header bytes, as a client or an attacker can."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from talon import entrypoints
from talon.api.push import SWEEP_TOKEN_HEADER, push_checks
from talon.api.scheduler_callback import callback_verifier
from talon.broker.signing import SIGNATURE_ATTRIBUTE
from talon.config import MessageBrokerSettings, SchedulerSettings
from talon.errors import ConfigError
from talon.scheduling.tasks import TOKEN_HEADER

# UTF-8 (what a client that encodes text sends) and a lone Latin-1 byte (not valid UTF-8).
NON_ASCII = [pytest.param("tøken".encode(), id="utf-8"), pytest.param(b"t\xf8ken", id="latin-1")]
PUSH_TOKEN = "push-secret-123"
CALLBACK_TOKEN = "scheduler-secret-456"


def _assert_401_json(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


@pytest.mark.parametrize("secret", NON_ASCII)
def test_the_gateway_answers_401(gateway_url: str, secret: bytes) -> None:
    reply = httpx.get(
        f"{gateway_url}/v1/namespaces", headers={"Authorization": b"Bearer " + secret}
    )
    assert _assert_401_json(reply)["error"]["code"] == "unauthenticated"


@pytest.mark.parametrize("secret", NON_ASCII)
def test_the_ops_mcp_server_answers_401(gateway_url: str, ops_server: str, secret: bytes) -> None:
    reply = httpx.post(ops_server, json={}, headers={"Authorization": b"Bearer " + secret})
    _assert_401_json(reply)


@pytest.mark.parametrize("secret", NON_ASCII)
def test_the_gateways_talon_ops_route_answers_401(
    gateway_url: str, ops_server: str, secret: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forwarded to the ops_mcp function as the same bytes, refused there."""
    monkeypatch.setenv("TALON_GATEWAY_OPS_MCP_UPSTREAM", ops_server.removesuffix("/mcp/talon-ops"))
    entrypoints.reset()
    reply = httpx.post(f"{gateway_url}/mcp/talon-ops", json={},
                       headers={"Authorization": b"Bearer " + secret})  # fmt: skip
    _assert_401_json(reply)


@pytest.fixture
def push_token_mode(
    dispatch_server: Any, gateway_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    monkeypatch.setenv("TALON_CONTROL_PLANE_MESSAGE_BROKER_PUSH_VERIFICATION", "token")
    monkeypatch.setenv("TALON_CONTROL_PLANE_MESSAGE_BROKER_PUSH_TOKEN", PUSH_TOKEN)
    entrypoints.reset()
    yield dispatch_server.url
    entrypoints.reset()


@pytest.mark.parametrize("secret", NON_ASCII)
def test_the_dispatch_sweep_answers_401(push_token_mode: str, secret: bytes) -> None:
    reply = httpx.post(f"{push_token_mode}/sweep", headers={SWEEP_TOKEN_HEADER: secret})
    assert _assert_401_json(reply)["error"]["code"] == "unauthenticated"


@pytest.mark.parametrize("signature", ["v1=tøken", "v1=\ud800"], ids=["non-ascii", "surrogate"])
def test_a_non_ascii_push_signature_is_a_401(push_token_mode: str, signature: str) -> None:
    envelope = {"message": {"data": "", "attributes": {SIGNATURE_ATTRIBUTE: signature}}}
    reply = httpx.post(f"{push_token_mode}/", content=json.dumps(envelope),
                       headers={"Content-Type": "application/json"})  # fmt: skip
    assert _assert_401_json(reply)["error"]["code"] == "unauthenticated"


@pytest.fixture
def callback_token_mode(
    scheduler_server: Any, gateway_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The scheduler function in `token` mode. Its queue is never reached: the callback
    checks the caller first."""
    env = {"BACKEND": "cloud_tasks", "PROJECT": "p", "LOCATION": "l", "QUEUE": "q",
           "CALLBACK_URL": f"{scheduler_server.url}/fire", "CALLBACK_VERIFICATION": "token",
           "CALLBACK_TOKEN": CALLBACK_TOKEN, "EMULATOR_HOST": "127.0.0.1:9"}  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(f"TALON_CONTROL_PLANE_SCHEDULER_{key}", value)
    entrypoints.reset()
    yield scheduler_server.url
    entrypoints.reset()


@pytest.mark.parametrize("secret", NON_ASCII)
def test_the_scheduler_callback_answers_401(callback_token_mode: str, secret: bytes) -> None:
    for path in ("/fire", "/sweep"):
        reply = httpx.post(f"{callback_token_mode}{path}", json={}, headers={TOKEN_HEADER: secret})
        assert _assert_401_json(reply)["error"]["code"] == "unauthenticated"
    # The right secret still passes (and the empty task is then a 400).
    good = httpx.post(
        f"{callback_token_mode}/fire", json={}, headers={TOKEN_HEADER: CALLBACK_TOKEN}
    )
    assert good.status_code == 400


def test_token_modes_without_a_secret_refuse_to_start() -> None:
    with pytest.raises(ConfigError, match=r"control_plane\.message_broker\.pushToken"):
        push_checks(MessageBrokerSettings(push_verification="token"))
    with pytest.raises(ConfigError, match=r"control_plane\.scheduler\.callbackToken"):
        callback_verifier(SchedulerSettings(callback_verification="token"))
