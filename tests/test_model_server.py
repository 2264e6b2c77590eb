"""The test model server refuses what OpenAI's API refuses: one test per rule, over real HTTP
with raw requests (not through Talon), plus the requests it must accept. A green suite against
a lenient double proves nothing, so the double is tested too."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from model_server import ModelServer

pytestmark = pytest.mark.fast

SCHEMA = {"type": "object", "properties": {}}
FUNCTION = {"name": "list_invoices", "description": "List.", "parameters": SCHEMA}
TOOL = {"type": "function", "function": FUNCTION}
CALL = {"id": "call_1", "type": "function",
        "function": {"name": "list_invoices", "arguments": "{}"}}  # fmt: skip
VALID: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Invoices?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "[]"},
        {"role": "assistant", "content": "None open."},
        {"role": "user", "content": "Thanks."},
    ],
    "tools": [TOOL],
    "temperature": 0.2,
}


@pytest.fixture(scope="module")
def server() -> Iterator[ModelServer]:
    running = ModelServer()
    yield running
    running.close()


def post(server: ModelServer, body: Any, *, key: str | None = "sk-test") -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers["Content-Type"] = "application/json"
    return httpx.post(f"{server.url}/chat/completions", content=content, headers=headers)


def variant(change: Any) -> dict[str, Any]:
    body = copy.deepcopy(VALID)
    change(body)
    return body


def refused(server: ModelServer, body: Any, param: str | None, needle: str) -> dict[str, Any]:
    response = post(server, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert needle in error["message"]
    return error


def test_a_valid_request_with_a_tool_round_trip_is_accepted(server: ModelServer) -> None:
    response = post(server, VALID)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "ok"


def test_a_request_without_an_api_key_is_refused_with_401(server: ModelServer) -> None:
    response = post(server, VALID, key=None)
    assert response.status_code == 401
    assert "didn't provide an API key" in response.json()["error"]["message"]


def test_a_wrong_api_key_is_refused_when_the_server_knows_its_keys() -> None:
    strict = ModelServer(api_keys={"sk-right"})
    try:
        assert post(strict, VALID, key="sk-wrong").json()["error"]["code"] == "invalid_api_key"
        assert post(strict, VALID, key="sk-right").status_code == 200
    finally:
        strict.close()


def test_a_tool_name_with_a_dot_is_refused(server: ModelServer) -> None:
    body = variant(lambda b: b["tools"][0]["function"].update(name="stripe.list_invoices"))
    error = refused(server, body, "tools[0].function.name", "does not match pattern")
    assert "'^[a-zA-Z0-9_-]+$'" in error["message"]


def test_a_tool_name_over_64_characters_is_refused(server: ModelServer) -> None:
    body = variant(lambda b: b["tools"][0]["function"].update(name="a" * 65))
    error = refused(server, body, "tools[0].function.name", "maximum length 64")
    assert error["code"] == "string_above_max_length"


def test_two_tools_with_one_name_are_refused(server: ModelServer) -> None:
    body = variant(lambda b: b["tools"].append(copy.deepcopy(TOOL)))
    refused(server, body, "tools[1].function.name", "must be unique")


def test_an_empty_tool_list_is_refused(server: ModelServer) -> None:
    refused(server, variant(lambda b: b.update(tools=[])), "tools", "empty array")


def test_a_tool_schema_that_is_not_an_object_is_refused(server: ModelServer) -> None:
    body = variant(lambda b: b["tools"][0]["function"].update(parameters={"type": "string"}))
    refused(server, body, "tools[0].function.parameters", "JSON Schema of 'type: \"object\"'")


def test_a_called_name_with_a_dot_is_refused(server: ModelServer) -> None:
    body = variant(lambda b: b["messages"][2]["tool_calls"][0]["function"].update(name="a.b"))
    refused(server, body, "messages[2].tool_calls[0].function.name", "does not match pattern")


def test_a_call_id_over_40_characters_is_refused(server: ModelServer) -> None:
    def long_id(body: dict[str, Any]) -> None:
        body["messages"][2]["tool_calls"][0]["id"] = "x" * 41
        body["messages"][3]["tool_call_id"] = "x" * 41

    refused(server, variant(long_id), "messages[2].tool_calls[0].id", "maximum length 40")


def test_a_call_without_its_result_is_refused(server: ModelServer) -> None:
    body = variant(lambda b: b["messages"].pop(3))
    refused(server, body, "messages.[3].role", "did not have response messages: call_1")


def test_a_result_after_another_message_is_refused(server: ModelServer) -> None:
    body = variant(lambda b: b["messages"].insert(3, {"role": "user", "content": "and?"}))
    refused(server, body, "messages.[3].role", "did not have response messages: call_1")


def test_a_result_without_a_call_is_refused(server: ModelServer) -> None:
    body = variant(lambda b: b["messages"].insert(1, {"role": "tool", "tool_call_id": "c",
                                                      "content": "stray"}))  # fmt: skip
    refused(server, body, "messages.[1].role", "must be a response to a preceeding message")


def test_a_second_result_for_one_call_is_refused(server: ModelServer) -> None:
    body = variant(lambda b: b["messages"].insert(4, copy.deepcopy(b["messages"][3])))
    refused(server, body, "messages.[4].role", "must be a response to a preceeding message")


def test_a_tool_message_without_tool_call_id_is_refused(server: ModelServer) -> None:
    body = variant(lambda b: b["messages"][3].pop("tool_call_id"))
    refused(server, body, "messages[3].tool_call_id", "Missing required parameter")


def test_an_unknown_role_is_refused(server: ModelServer) -> None:
    body = variant(lambda b: b["messages"][1].update(role="customer"))
    refused(server, body, "messages[1].role", "Invalid value: 'customer'")


def test_an_unknown_message_field_is_refused(server: ModelServer) -> None:
    body = variant(lambda b: b["messages"][4].update(provider="primary/openai:gpt-4o"))
    refused(server, body, "messages[4]", "('provider' was unexpected)")


def test_missing_or_null_content_is_refused_where_it_is_required(server: ModelServer) -> None:
    refused(server, variant(lambda b: b["messages"][1].pop("content")), "messages[1].content",
            "Missing required parameter")  # fmt: skip
    refused(server, variant(lambda b: b["messages"][4].update(content=None)),
            "messages[4].content", "got null instead")  # fmt: skip


def test_empty_messages_and_unknown_arguments_are_refused(server: ModelServer) -> None:
    refused(server, variant(lambda b: b.update(messages=[])), "messages", "empty array")
    refused(server, variant(lambda b: b.update(reasoning="high")), None,
            "Unrecognized request argument supplied: reasoning")  # fmt: skip


def test_stream_options_without_stream_are_refused(server: ModelServer) -> None:
    body = variant(lambda b: b.update(stream_options={"include_usage": True}))
    refused(server, body, "stream_options", "only allowed when 'stream' is enabled")


def test_out_of_range_sampling_settings_are_refused(server: ModelServer) -> None:
    refused(server, variant(lambda b: b.update(temperature=2.5)), "temperature", "<= 2")
    refused(server, variant(lambda b: b.update(max_tokens=0)), "max_tokens", ">= 1")


def test_nan_is_not_json(server: ModelServer) -> None:
    raw = json.dumps(VALID).replace('"temperature": 0.2', '"temperature": NaN').encode()
    refused(server, raw, None, "could not parse the JSON body")


def test_refusals_are_recorded_and_the_script_is_untouched(server: ModelServer) -> None:
    server.add({"content": "scripted"})
    before = len(server.refused)
    post(server, variant(lambda b: b["messages"].pop(3)))
    assert len(server.refused) == before + 1
    assert post(server, VALID).json()["choices"][0]["message"]["content"] == "scripted"


def test_a_script_calling_an_unoffered_tool_is_a_broken_test(server: ModelServer) -> None:
    server.add({"tool_calls": [{"name": "stripe.list_invoices"}]})
    response = post(server, VALID)
    assert response.status_code == 500
    assert server.script_errors.pop() == (
        "the script calls ['stripe.list_invoices'], which the request did not offer"
    )
    server.add({"tool_calls": [{"name": "made_up", "unoffered": True}]})
    call = post(server, VALID).json()["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "made_up"


def test_a_body_cut_short_is_a_client_gone_not_a_refusal(server: ModelServer) -> None:
    """A client killed while sending its body (the crash tests SIGKILL workers at any
    moment) sent no request to judge; a complete body that is not JSON is still refused."""
    import socket
    import time
    from urllib.parse import urlsplit

    address = urlsplit(server.url)
    before, cut = len(server.refused), server.cut_short
    body = json.dumps(VALID).encode()
    with socket.create_connection((address.hostname, address.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-test\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % len(body)
            + body[: len(body) // 2]
        )
    deadline = time.monotonic() + 5
    while server.cut_short == cut and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.cut_short == cut + 1 and len(server.refused) == before
    refused(server, body[: len(body) // 2], None, "could not parse the JSON body")
