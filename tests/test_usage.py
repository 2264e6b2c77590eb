"""Model token usage: recorded with each journaled model step, carried by the stream's
`call-model` step, summed per turn, session, agent and namespace over a time range, kept
when a session is deleted, forgotten with its namespace, and hidden across namespaces."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import samples
from conftest import Api, read_stream
from talon.runtime.providers.base import ToolSpec
from talon.runtime.tools.base import AgentContext, ToolResult, Toolset

NS = "/v1/ns/acme"


class RenewalTools:
    def tools_for(self, context: AgentContext) -> Toolset:
        days = {"type": "object", "properties": {"days": {"type": "integer"}}}
        return Toolset([ToolSpec("get_renewals", "Renewals due soon.", days)])

    def call(self, context: AgentContext, name: str, arguments: dict[str, Any]) -> ToolResult:
        return ToolResult(json.dumps({"accounts": ["globex"]}))


def _policy(url: str) -> dict[str, Any]:
    return {
        "profiles": [{"name": "primary",
                      "model": {"provider": "openai", "name": "model-a", "baseUrl": url}}],
        "retry": {"maxAttempts": 1},
        "turnTimeoutSeconds": 30,
    }  # fmt: skip


def _run(api: Api, agent: str, session: str, content: str) -> tuple[str, list[dict[str, Any]]]:
    base = f"{NS}/agents/{agent}/sessions/{session}"
    accepted = api.ok("POST", f"{base}/message", 202, json={"content": content})
    events = read_stream(api, f"{base}/stream", last_event_id=accepted["streamFrom"],
                         params={"untilTurnEnd": "true"})  # fmt: skip
    assert events[-1]["type"] == "turn.completed", events[-1]
    return accepted["turnId"], events


@pytest.fixture
def spent(api: Api, model_server, start_worker) -> Api:
    """Two agents of acme: bot's session s1 ran a turn with a tool call (two model steps,
    100+20 and 300+40 tokens), bot2's session s2 a plain turn (7+3)."""
    template = samples.template("acme")
    template["definition"]["modelPolicy"] = _policy(model_server.url)
    api.ok("POST", "/v1/apply", json={"items": [
        samples.namespace("acme"), template, samples.agent("acme"),
        samples.agent("acme", "bot2"), samples.namespace("globex"),
    ]})  # fmt: skip
    api.ok("POST", f"{NS}/agents/bot/sessions", 201, json={"id": "s1"})
    api.ok("POST", f"{NS}/agents/bot2/sessions", 201, json={"id": "s2"})
    start_worker(tools=RenewalTools())
    model_server.add(
        {"tool_calls": [{"name": "get_renewals", "arguments": {"days": 14}}], "usage": [100, 20]},
        {"content": "Globex renews.", "usage": [300, 40]},
    )
    api.turn_id, api.events = _run(api, "bot", "s1", "Renewals?")  # type: ignore[attr-defined]
    model_server.add({"content": "Hello.", "usage": [7, 3]})
    _run(api, "bot2", "s2", "Hi")
    return api


def _sums(calls: int, prompt: int, completion: int) -> dict[str, int]:
    return {"modelCalls": calls, "promptTokens": prompt, "completionTokens": completion,
            "totalTokens": prompt + completion}  # fmt: skip


def test_each_model_step_carries_its_usage_and_the_turn_sums_them(spent: Api) -> None:
    steps = [e["data"] for e in spent.events  # type: ignore[attr-defined]
             if e["type"] == "step.completed" and e["data"]["step"] == "call-model"]  # fmt: skip
    assert [s["usage"] for s in steps] == [
        {"promptTokens": 100, "completionTokens": 20},
        {"promptTokens": 300, "completionTokens": 40},
    ]
    turn = spent.ok("GET", f"{NS}/agents/bot/sessions/s1/turns/{spent.turn_id}")  # type: ignore[attr-defined]
    assert turn["usage"] == _sums(2, 400, 60)


def test_usage_is_summed_and_grouped_per_namespace_agent_and_session(spent: Api) -> None:
    usage = spent.ok("GET", f"{NS}/usage")
    assert usage["total"] == _sums(3, 407, 63)
    assert "groups" not in usage or usage["groups"] is None
    by_agent = spent.ok("GET", f"{NS}/usage", params={"groupBy": "agent"})
    assert by_agent["groups"] == [
        {"key": "bot", **_sums(2, 400, 60)}, {"key": "bot2", **_sums(1, 7, 3)}
    ]  # fmt: skip
    assert by_agent["nextPageToken"] is None
    for group, key in (("provider", "openai"), ("model", "model-a"), ("profile", "primary"),
                       ("day", datetime.now(UTC).strftime("%Y-%m-%d"))):  # fmt: skip
        grouped = spent.ok("GET", f"{NS}/usage", params={"groupBy": group})
        assert grouped["groups"] == [{"key": key, **_sums(3, 407, 63)}], group
    assert spent.ok("GET", f"{NS}/agents/bot/usage")["total"] == _sums(2, 400, 60)
    session = spent.ok("GET", f"{NS}/agents/bot2/sessions/s2/usage", params={"groupBy": "turn"})
    assert session["total"] == _sums(1, 7, 3)
    assert session["groups"] == [{"key": 1, **_sums(1, 7, 3)}]


def test_groups_page_in_key_order(spent: Api) -> None:
    first = spent.ok("GET", f"{NS}/usage", params={"groupBy": "agent", "limit": 1})
    assert [g["key"] for g in first["groups"]] == ["bot"]
    assert first["nextPageToken"]
    second = spent.ok("GET", f"{NS}/usage", params={
        "groupBy": "agent", "limit": 1, "pageToken": first["nextPageToken"]})  # fmt: skip
    assert [g["key"] for g in second["groups"]] == ["bot2"]
    assert second["nextPageToken"] is None
    # The page's total is the whole range's, not the page's.
    assert second["total"] == first["total"] == _sums(3, 407, 63)


def test_the_time_range_selects_what_was_recorded_in_it(spent: Api) -> None:
    now = datetime.now(UTC)
    later = (now + timedelta(hours=1)).isoformat()
    earlier = (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    assert spent.ok("GET", f"{NS}/usage", params={"since": later, "until": (
        now + timedelta(hours=2)).isoformat()})["total"] == _sums(0, 0, 0)  # fmt: skip
    assert spent.ok("GET", f"{NS}/usage", params={"until": earlier})["total"] == _sums(0, 0, 0)
    window = spent.ok("GET", f"{NS}/usage", params={"since": earlier})
    assert window["total"] == _sums(3, 407, 63)
    assert window["since"] == earlier.replace("+00:00", "Z")


def test_usage_outlives_a_deleted_session(spent: Api) -> None:
    spent.ok("DELETE", f"{NS}/agents/bot2/sessions/s2")
    spent.ok("GET", f"{NS}/agents/bot2/sessions/s2/usage", 404)
    assert spent.ok("GET", f"{NS}/agents/bot2/usage")["total"] == _sums(1, 7, 3)
    by_session = spent.ok("GET", f"{NS}/usage", params={"groupBy": "session"})
    assert [g["key"] for g in by_session["groups"]] == ["s1", "s2"]


def test_a_deleted_namespace_takes_its_usage_along(api: Api, db) -> None:
    """A namespace created again under the same name does not inherit the old one's bill."""
    api.ok("POST", "/v1/apply", json={"items": [samples.namespace("tmp")]})
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO model_usage (turn_id, idx, namespace, agent, session_id, session_uid, "
            "turn_seq, profile, provider, model, prompt_tokens, completion_tokens) VALUES "
            "(gen_random_uuid(), 1, 'tmp', 'bot', 's', gen_random_uuid(), 1, 'p', 'openai', "
            "'m', 5, 5)"
        )
    assert api.ok("GET", "/v1/ns/tmp/usage")["total"]["modelCalls"] == 1
    api.ok("DELETE", "/v1/namespaces/tmp")
    api.ok("GET", "/v1/ns/tmp/usage", 404)
    api.ok("POST", "/v1/apply", json={"items": [samples.namespace("tmp")]})
    assert api.ok("GET", "/v1/ns/tmp/usage")["total"] == _sums(0, 0, 0)


def test_another_namespaces_usage_reads_as_missing(spent: Api) -> None:
    """A globex token (admin of its own namespace) asking for acme's usage, at every level,
    gets what a namespace that does not exist gets."""
    intruder = spent.as_token(spent.token("admin", ["globex"]))
    for path in ("usage", "agents/bot/usage", "agents/bot/sessions/s1/usage"):
        hidden = intruder.http.get(f"/v1/ns/acme/{path}")
        missing = intruder.http.get(f"/v1/ns/nowhere/{path}")
        assert hidden.status_code == missing.status_code == 404, path
        assert hidden.json()["error"]["message"].replace("acme", "X") == missing.json()[
            "error"]["message"].replace("nowhere", "X")  # fmt: skip
    assert intruder.ok("GET", "/v1/ns/globex/usage")["total"] == _sums(0, 0, 0)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-13-01T00:00:00Z"}, "since"),
        ({"until": "2026-11-01T25:00:00Z"}, "until"),
        ({"until": "2026-11-01T00:00:00"}, "until"),  # no offset: whose midnight?
        ({"since": "2026-11-02T00:00:00Z", "until": "2026-11-01T00:00:00Z"}, "since"),
        ({"groupBy": "tenant"}, "groupBy"),
        ({"groupBy": "turn", "pageToken": base64.urlsafe_b64encode(b"x1").decode()}, "pageToken"),
        ({"groupBy": "agent", "pageToken": "!!"}, "pageToken"),
        ({"limit": "0"}, "limit"),
    ],
)
def test_bad_parameters_are_a_400_naming_them(api: Api, params: dict[str, str], field: str) -> None:
    api.ok("POST", "/v1/apply", json={"items": [samples.namespace("acme")]})
    reply = api.http.get(f"{NS}/usage", params=params)
    assert reply.status_code == 400, reply.text
    assert [d["path"] for d in reply.json()["error"]["details"]] == [field]
