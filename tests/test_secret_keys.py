"""Model keys from Secret Manager (`apiKeyFrom: {secret: projects/P/secrets/S}`): read at call
time through the real google-auth and REST path against a local Secret Manager, cached with a
TTL, read again when the provider answers 401 (a rotated key), and refused clearly when the
secret is missing or not granted."""

from __future__ import annotations

import time
from typing import Any

import pytest

from conftest import Api, read_stream
from talon.runtime.failover import PolicyError, complete_with_policy
from talon.runtime.providers.base import ModelRequest
from test_models import FAST_RETRY, _agent_with_policy, clients_for, policy

KEY_SECRET = "projects/test-project/secrets/openai-key"


def keyed_policy(url: str, secret: str = KEY_SECRET, *names: str) -> dict[str, Any]:
    model_policy = policy(url, *(names or ("primary",)))
    model_policy["profiles"][0]["model"]["apiKeyFrom"] = {"secret": secret}
    return model_policy


def ask(model_policy: dict[str, Any]) -> Any:
    clients = clients_for(model_policy)
    request = ModelRequest([{"role": "user", "content": "hi"}], [], 10)
    return complete_with_policy(clients, FAST_RETRY, request, deadline=time.monotonic() + 10)


@pytest.fixture(autouse=True)
def no_platform_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def test_the_key_is_read_from_secret_manager_once_per_ttl(
    model_server: Any, secret_manager: Any
) -> None:
    secret_manager.add_version(KEY_SECRET, "sk-first")
    model_server.api_keys = {"sk-first"}
    model_policy = keyed_policy(model_server.url)
    for _ in range(3):
        assert ask(model_policy).content == "ok"
    assert model_server.keys_seen == ["sk-first"] * 3
    assert secret_manager.accesses == [f"{KEY_SECRET}/versions/latest"]
    assert secret_manager.tokens_issued == 1  # one OAuth token for the process, reused


def test_a_401_reads_the_rotated_key_and_retries_once(
    model_server: Any, secret_manager: Any
) -> None:
    secret_manager.add_version(KEY_SECRET, "sk-first")
    model_server.api_keys = {"sk-first"}
    model_policy = keyed_policy(model_server.url)
    ask(model_policy)
    secret_manager.add_version(KEY_SECRET, "sk-second")  # rotated: the old key is revoked
    model_server.api_keys = {"sk-second"}
    assert ask(model_policy).content == "ok"
    assert model_server.keys_seen == ["sk-first", "sk-first", "sk-second"]
    assert len(secret_manager.accesses) == 2
    assert [r.status for r in model_server.refused] == [401]
    model_server.refused.clear()  # the refusal was the point
    # A key that is simply wrong is not retried forever: one fresh read, then the error.
    model_server.api_keys = {"sk-elsewhere"}
    with pytest.raises(PolicyError) as exc:
        ask(model_policy)
    assert "HTTP 401" in str(exc.value)
    assert len(model_server.refused) == 1 and len(secret_manager.accesses) == 3
    model_server.refused.clear()


@pytest.mark.parametrize(
    ("grant", "secret", "reason"),
    [
        (False, KEY_SECRET, "PERMISSION_DENIED"),
        (True, "projects/test-project/secrets/no-such-key", "PERMISSION_DENIED"),
        (True, f"{KEY_SECRET}/versions/7", "NOT_FOUND"),
    ],
)
def test_an_unreadable_key_fails_the_profile_clearly_and_fails_over(
    model_server: Any, secret_manager: Any, monkeypatch: pytest.MonkeyPatch,
    grant: bool, secret: str, reason: str,
) -> None:  # fmt: skip
    secret_manager.add_version(KEY_SECRET, "sk-first", grant=grant)
    monkeypatch.setenv("ACME_OPENAI_KEY", "sk-acme")
    model_server.api_keys = {"sk-acme"}
    model_policy = keyed_policy(model_server.url, secret, "primary", "secondary")
    model_policy["profiles"][1]["model"]["apiKeyFrom"] = {"env": "ACME_OPENAI_KEY"}
    response = ask(model_policy)  # the secondary uses a key from the environment
    assert response.provider.startswith("secondary/")
    assert model_server.keys_seen == ["sk-acme"]
    model_policy["profiles"] = model_policy["profiles"][:1]
    with pytest.raises(PolicyError) as exc:
        ask(model_policy)
    assert reason in str(exc.value) and secret.split("/versions/")[0] in str(exc.value)
    assert "sk-first" not in str(exc.value)


def test_a_turn_runs_with_a_key_from_secret_manager(
    api: Api, model_server: Any, secret_manager: Any, start_worker: Any
) -> None:
    secret_manager.add_version(KEY_SECRET, "sk-turn")
    model_server.api_keys = {"sk-turn"}
    _agent_with_policy(api, keyed_policy(model_server.url))
    start_worker()
    base = "/v1/ns/acme/agents/bot/sessions/s1"
    api.ok("POST", f"{base}/message", 202, json={"content": "hello"})
    events = read_stream(api, f"{base}/stream", last_event_id=0, params={"untilTurnEnd": "true"})
    assert events[-1]["type"] == "turn.completed"
    assert model_server.keys_seen == ["sk-turn"]
