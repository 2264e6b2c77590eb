"""Model policy: the real openai client against a scripted OpenAI-compatible server, retry with
backoff, failover across profiles, deadlines; and turns that call tools."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

import samples
from conftest import Api, read_stream, tenancy_for_tests
from talon.runtime.failover import PolicyError, build_clients, complete_with_policy
from talon.runtime.providers.base import ModelRequest, ToolSpec
from talon.runtime.tools.base import AgentContext, ToolResult, Toolset

FAST_RETRY = {"maxAttempts": 2, "initialBackoffSeconds": 0.01, "maxBackoffSeconds": 0.05}


def policy(url: str, *names: str, retry: dict | None = None) -> dict[str, Any]:
    return {
        "profiles": [
            {"name": n, "model": {"provider": "openai", "name": f"model-{n}", "baseUrl": url}}
            for n in names
        ],
        "retry": retry or FAST_RETRY,
        "turnTimeoutSeconds": 30,
    }


def clients_for(model_policy: dict[str, Any], *, demo_fallback: bool = False) -> Any:
    """The policy's clients for namespace acme under the tests' tenancy policy."""
    return build_clients(model_policy, namespace="acme", tenancy=tenancy_for_tests(),
                         demo_fallback=demo_fallback)  # fmt: skip


def ask(model_policy: dict[str, Any], *, deadline_seconds: float = 10) -> Any:
    clients = clients_for(model_policy)
    request = ModelRequest([{"role": "user", "content": "hi"}], [], deadline_seconds)
    return complete_with_policy(
        clients, model_policy["retry"], request, deadline=time.monotonic() + deadline_seconds
    )


def test_429_is_retried_on_the_same_profile(model_server) -> None:
    model_server.add({"status": 429}, {"content": "after a retry"})
    response = ask(policy(model_server.url, "primary", "secondary"))
    assert response.content == "after a retry"
    assert response.provider == "primary/openai:model-primary"
    assert [r["model"] for r in model_server.requests] == ["model-primary"] * 2


def test_5xx_exhausts_retries_then_fails_over(model_server) -> None:
    model_server.add({"status": 500}, {"status": 503}, {"content": "from secondary"})
    response = ask(policy(model_server.url, "primary", "secondary"))
    assert response.provider == "secondary/openai:model-secondary"
    assert [r["model"] for r in model_server.requests] == [
        "model-primary", "model-primary", "model-secondary"
    ]  # fmt: skip


def test_non_retryable_error_fails_over_at_once(model_server) -> None:
    model_server.add({"status": 400}, {"content": "fine"})
    response = ask(policy(model_server.url, "primary", "secondary"))
    assert response.provider.startswith("secondary/")
    assert len(model_server.requests) == 2


def test_every_profile_failing_is_one_clear_error(model_server) -> None:
    model_server.add(*[{"status": 500}] * 4)
    with pytest.raises(PolicyError) as exc:
        ask(policy(model_server.url, "primary", "secondary"))
    assert len(exc.value.attempts) == 4
    assert "HTTP 500" in str(exc.value)


@pytest.mark.parametrize(
    ("streamed", "garbage"),
    [
        (False, {"choices": [{"message": 7}]}),
        (False, ["an", "array", "where", "an", "object", "belongs"]),
        (True, [{"choices": "not a list"}]),
        (True, [["a", "chunk", "that", "is", "no", "object"]]),
        (True, [7]),
    ],
)
def test_a_malformed_answer_is_retried_not_a_crash(model_server, streamed: bool,
                                                    garbage: Any) -> None:  # fmt: skip
    """A provider answering nonsense with 200 gets a clear, retryable error (the adapter
    takes the JSON untyped from openai, so every shape is its own to check)."""
    model_server.add({"raw": garbage}, {"content": "sane again"})
    model_policy = policy(model_server.url, "primary")
    clients = clients_for(model_policy)
    deltas: list[str] = []
    request = ModelRequest([{"role": "user", "content": "hi"}], [], 10,
                           deltas.append if streamed else None)  # fmt: skip
    response = complete_with_policy(clients, model_policy["retry"], request,
                                    deadline=time.monotonic() + 10)  # fmt: skip
    assert response.content == "sane again"
    assert len(model_server.requests) == 2
    model_server.add(*[{"raw": garbage}] * 2)
    with pytest.raises(PolicyError) as exc:
        complete_with_policy(clients, model_policy["retry"], request,
                             deadline=time.monotonic() + 10)  # fmt: skip
    assert "malformed response" in str(exc.value)


@pytest.mark.parametrize(
    ("reply", "said"),
    [
        ({"raw_text": "<html>not JSON</html>"}, "malformed response (not JSON)"),
        ({"raw_text": ["{not JSON either"]}, "malformed response (not JSON)"),
        ({"raw": [{"error": {"message": "overloaded, try later"}}]}, "overloaded, try later"),
    ],
    ids=["body-not-json", "event-not-json", "error-event"],
)
def test_an_answer_the_client_cannot_parse_is_a_model_error(
    model_server: Any, reply: dict[str, Any], said: str
) -> None:
    """openai raises its own errors for these (a decoding error, an APIError for an error
    event mid-stream): each is a retryable model error, so the policy retries and fails
    over, instead of an exception that would leave the turn running."""
    streamed = isinstance(reply.get("raw_text"), list) or "raw" in reply
    model_server.add(reply, {"content": "sane again"})
    model_policy = policy(model_server.url, "primary")
    clients = clients_for(model_policy)
    request = ModelRequest([{"role": "user", "content": "hi"}], [], 10,
                           (lambda _: None) if streamed else None)  # fmt: skip
    response = complete_with_policy(clients, model_policy["retry"], request,
                                    deadline=time.monotonic() + 10)  # fmt: skip
    assert response.content == "sane again"
    model_server.add(reply, reply)
    with pytest.raises(PolicyError) as exc:
        complete_with_policy(clients, model_policy["retry"], request,
                             deadline=time.monotonic() + 10)  # fmt: skip
    assert said in str(exc.value)


def test_a_hanging_model_is_cut_off_by_the_deadline(model_server) -> None:
    model_server.add({"hang": 5, "content": "too late"}, {"hang": 5, "content": "too late"})
    started = time.monotonic()
    with pytest.raises(PolicyError):
        ask(policy(model_server.url, "primary"), deadline_seconds=1.0)
    assert time.monotonic() - started < 3


def test_request_carries_tools_and_sampling_settings(model_server) -> None:
    model_policy = policy(model_server.url, "primary")
    model_policy["profiles"][0]["model"]["temperature"] = 0.2
    model_policy["profiles"][0]["model"]["maxTokens"] = 64
    clients = clients_for(model_policy)
    tool = ToolSpec("get_customer", "Look a customer up.",
                    {"type": "object", "properties": {"id": {"type": "string"}}})  # fmt: skip
    request = ModelRequest([{"role": "user", "content": "hi"}], [tool], 5)
    complete_with_policy(clients, FAST_RETRY, request, deadline=time.monotonic() + 5)
    sent = model_server.requests[0]
    assert sent["temperature"] == 0.2 and sent["max_tokens"] == 64
    assert sent["tools"][0]["function"]["name"] == "get_customer"


def test_missing_credentials_fail_clearly_or_use_demo_when_allowed(monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    model_policy = {"profiles": [{"name": "primary", "model": {"provider": "openai",
                                                               "name": "gpt-4o"}}],
                    "retry": FAST_RETRY}  # fmt: skip
    with pytest.raises(PolicyError) as exc:
        ask(model_policy)
    assert "OPENAI_API_KEY is not set" in str(exc.value)
    demo = clients_for(model_policy, demo_fallback=True)
    assert demo[0].client.label == "primary/demo:demo (no credentials)"


# --- through the worker ----------------------------------------------------------------------


class RecordingTools:
    """A tool source for tests: `get_renewals` answers from a table and counts calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def tools_for(self, context: AgentContext) -> Toolset:
        return Toolset([ToolSpec("get_renewals", "Renewals due soon.",
                                 {"type": "object", "properties": {"days": {"type": "integer"}},
                                  "required": ["days"]})])  # fmt: skip

    def call(self, context: AgentContext, name: str, arguments: dict[str, Any]) -> ToolResult:
        self.calls.append((name, arguments))
        return ToolResult(json.dumps({"accounts": ["globex", "initech"], **arguments}))


def _agent_with_policy(api: Api, model_policy: dict[str, Any]) -> None:
    template = samples.template("acme")
    template["definition"]["modelPolicy"] = model_policy
    api.ok("POST", "/v1/apply", json={"items": [samples.namespace("acme"), template,
                                                 samples.agent("acme")]})  # fmt: skip
    api.ok("POST", "/v1/ns/acme/agents/bot/sessions", 201, json={"id": "s1"})


def test_turn_fails_over_and_the_stream_names_the_provider(
    api: Api, model_server, start_worker
) -> None:
    _agent_with_policy(api, policy(model_server.url, "primary", "secondary"))
    model_server.add({"status": 502}, {"status": 502}, {"content": "served by secondary"})
    start_worker()
    accepted = api.ok("POST", "/v1/ns/acme/agents/bot/sessions/s1/message", 202,
                      json={"content": "hello"})  # fmt: skip
    events = read_stream(
        api, "/v1/ns/acme/agents/bot/sessions/s1/stream",
        last_event_id=accepted["streamFrom"], params={"untilTurnEnd": "true"},
    )  # fmt: skip
    model_step = next(e for e in events if e["type"] == "step.completed"
                      and e["data"]["step"] == "call-model")  # fmt: skip
    assert model_step["data"]["provider"] == "secondary/openai:model-secondary"
    assert events[-1]["type"] == "turn.completed"
    assert events[-1]["data"]["provider"] == "secondary/openai:model-secondary"


def test_turn_with_every_profile_down_fails_and_the_session_goes_on(
    api: Api, model_server, start_worker
) -> None:
    _agent_with_policy(api, policy(model_server.url, "primary"))
    model_server.add({"status": 500}, {"status": 500}, {"content": "back again"})
    start_worker()
    base = "/v1/ns/acme/agents/bot/sessions/s1"
    first = api.ok("POST", f"{base}/message", 202, json={"content": "one"})
    second = api.ok("POST", f"{base}/message", 202, json={"content": "two"})
    events = read_stream(api, f"{base}/stream", last_event_id=0, params={"untilTurnEnd": "true"})
    failed = next(e for e in events if e["type"] == "turn.failed")
    assert failed["turnId"] == first["turnId"]
    assert failed["data"]["code"] == "model_unavailable"
    assert events[-1] == {**events[-1], "type": "turn.completed", "turnId": second["turnId"]}
    messages = api.ok("GET", f"{base}/messages")["items"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "one"), ("user", "two"), ("assistant", "back again")
    ]  # fmt: skip
    # The history sent for the second turn is valid: both user messages, no dangling calls.
    sent = model_server.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "user"]


def test_tool_calling_turn_journals_each_step(api: Api, model_server, start_worker) -> None:
    _agent_with_policy(api, policy(model_server.url, "primary"))
    model_server.add(
        {"tool_calls": [{"name": "get_renewals", "arguments": {"days": 14}}]},
        {"content": "Globex and Initech renew within 14 days."},
    )
    tools = RecordingTools()
    start_worker(tools=tools)
    base = "/v1/ns/acme/agents/bot/sessions/s1"
    api.ok("POST", f"{base}/message", 202, json={"content": "Review renewals due in 14 days."})
    events = read_stream(api, f"{base}/stream", last_event_id=0, params={"untilTurnEnd": "true"})
    steps = [e["data"]["step"] for e in events if e["type"] == "step.completed"]
    assert steps == ["load-knowledge", "call-model", "call-get_renewals", "call-model",
                     "write-next-message"]  # fmt: skip
    assert tools.calls == [("get_renewals", {"days": 14})]
    messages = api.ok("GET", f"{base}/messages")["items"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[1]["toolCalls"][0]["name"] == "get_renewals"
    assert messages[2]["toolCallId"] == messages[1]["toolCalls"][0]["id"]
    # The second model call saw the tool result, paired with its call.
    sent = model_server.requests[1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool"]
    assert json.loads(sent[3]["content"])["accounts"] == ["globex", "initech"]
    view = api.ok("GET", base)
    assert [s["step"] for s in view["stream"]] == steps


def test_a_slow_answer_streams_as_deltas(api: Api, model_server, start_worker) -> None:
    _agent_with_policy(api, policy(model_server.url, "primary"))
    pieces = ["Globex ", "renews ", "on the ", "9th; ", "Initech ", "on the 12th."]
    model_server.add({"pieces": pieces, "chunk_delay": 0.1})
    start_worker()
    base = "/v1/ns/acme/agents/bot/sessions/s1"
    api.ok("POST", f"{base}/message", 202, json={"content": "When do they renew?"})
    events = read_stream(api, f"{base}/stream", last_event_id=0, params={"untilTurnEnd": "true"})
    types = [e["type"] for e in events]
    deltas = [e for e in events if e["type"] == "message.delta"]
    assert len(deltas) >= 2  # flushed while the answer was still arriving
    assert "".join(d["data"]["text"] for d in deltas) == "".join(pieces)
    model_done = next(i for i, e in enumerate(events) if e["type"] == "step.completed"
                      and e["data"]["step"] == "call-model")  # fmt: skip
    assert max(i for i, t in enumerate(types) if t == "message.delta") < model_done
    assert events[-1]["type"] == "turn.completed"
    answer = api.ok("GET", f"{base}/messages")["items"][-1]
    assert answer["content"] == "".join(pieces)


def test_deltas_of_a_failed_attempt_are_marked_for_reset(
    api: Api, model_server, start_worker
) -> None:
    _agent_with_policy(api, policy(model_server.url, "primary", "secondary"))
    # The primary streams half an answer, then the connection drops; the secondary answers.
    model_server.add(
        {"pieces": ["Half ", "an ", "answer"], "chunk_delay": 0.2, "drop_after": 2},
        {"pieces": ["A whole ", "new answer."], "chunk_delay": 0.2},
    )
    start_worker()
    base = "/v1/ns/acme/agents/bot/sessions/s1"
    api.ok("POST", f"{base}/message", 202, json={"content": "Tell me."})
    events = read_stream(api, f"{base}/stream", last_event_id=0, params={"untilTurnEnd": "true"})
    deltas = [e["data"] for e in events if e["type"] == "message.delta"]
    assert deltas[0]["text"].startswith("Half")  # the cut attempt did stream some text
    assert any(d.get("reset") for d in deltas)
    text = ""
    for delta in deltas:
        text = ("" if delta.get("reset") else text) + delta["text"]
    assert text == "A whole new answer."
    assert api.ok("GET", f"{base}/messages")["items"][-1]["content"] == "A whole new answer."


def test_demo_provider_calls_a_fitting_tool_then_answers(api: Api, start_worker) -> None:
    model_policy = {"profiles": [{"name": "offline", "model": {"provider": "demo",
                                                               "name": "demo"}}]}  # fmt: skip
    _agent_with_policy(api, model_policy)
    tools = RecordingTools()
    start_worker(tools=tools)
    base = "/v1/ns/acme/agents/bot/sessions/s1"
    api.ok("POST", f"{base}/message", 202, json={"content": "Review renewals due in 14 days."})
    events = read_stream(api, f"{base}/stream", last_event_id=0, params={"untilTurnEnd": "true"})
    steps = [e["data"]["step"] for e in events if e["type"] == "step.completed"]
    assert steps == ["load-knowledge", "call-model", "call-get_renewals", "call-model",
                     "write-next-message"]  # fmt: skip
    assert tools.calls == [("get_renewals", {"days": 1})]  # required integer, placeholder value
    assert events[-1]["data"]["provider"] == "offline/demo:demo"
    answer = api.ok("GET", f"{base}/messages")["items"][-1]["content"]
    assert answer.startswith("(demo model) Here is what the tools returned. get_renewals:")
    # A message no tool fits gets a plain answer.
    api.ok("POST", f"{base}/message", 202, json={"content": "Hello there"})
    read_stream(api, f"{base}/stream", last_event_id=events[-1]["id"],
                params={"untilTurnEnd": "true"})  # fmt: skip
    assert api.ok("GET", f"{base}/messages")["items"][-1]["content"] == (
        "(demo model) Received: Hello there"
    )
    assert len(tools.calls) == 1
