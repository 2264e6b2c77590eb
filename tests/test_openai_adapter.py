"""The openai adapter (runtime/providers/openai_chat.py) through httpx's MockTransport, handed
to the openai client as its `http_client`: what each provider answer becomes (an answer, a
retryable or a final ModelError) and how a streamed answer is assembled. The scripted model
server (tests/model_server.py) holds the requests to OpenAI's rules over real HTTP in
test_models.py and test_wire_names.py; these cover the adapter's branches without a server."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from talon.runtime.providers.base import ModelError, ModelRequest, ModelResponse, ToolSpec
from talon.runtime.providers.openai_chat import OpenAIChatModel
from talon.runtime.providers.wire_names import wire_call_id
from talon.tenancy.egress import EgressDenied, EgressPolicy
from talon.tenancy.http_guard import guarded_client, reads_within

pytestmark = pytest.mark.fast

TOOL = ToolSpec("stripe-readonly.list_invoices", "Invoices.", {"type": "object"})
LONG_ID = "toolu_" + "x" * 60  # another provider's call id, over OpenAI's 40 characters


def model(handler: Callable[[httpx.Request], httpx.Response], **options: Any) -> OpenAIChatModel:
    return OpenAIChatModel(
        profile="primary", model="gpt-test", api_key="sk-test", base_url="http://model.test/v1",
        temperature=options.get("temperature"), max_tokens=options.get("max_tokens"),
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )  # fmt: skip


def ask(
    handler: Callable[[httpx.Request], httpx.Response],
    messages: list[dict[str, Any]] | None = None,
    on_delta: Callable[[str], None] | None = None,
) -> ModelResponse:
    request = ModelRequest(messages or [{"role": "user", "content": "hi"}], [TOOL], 5.0, on_delta)
    return model(handler).complete(request)


def completion(message: dict[str, Any], **extra: Any) -> httpx.Response:
    return httpx.Response(
        200, json={"choices": [{"index": 0, "message": message, "finish_reason": "stop"}], **extra}
    )


def test_names_and_ids_go_out_as_openai_accepts_them_and_come_back_as_stored() -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url == "http://model.test/v1/chat/completions"
        assert request.headers["Authorization"] == "Bearer sk-test"
        sent.append(json.loads(request.content))
        function = {"name": "stripe-readonly_list_invoices", "arguments": "{}"}
        call = {"id": "call_1", "type": "function", "function": function}
        return completion({"role": "assistant", "content": None, "tool_calls": [call]},
                          usage={"prompt_tokens": 12, "completion_tokens": 3})  # fmt: skip

    history = [
        {"role": "user", "content": "renewals?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": LONG_ID, "type": "function",
             "function": {"name": "stripe-readonly.list_invoices", "arguments": "{}"}}]},
        {"role": "tool", "content": "[]", "tool_call_id": LONG_ID},
    ]  # fmt: skip
    answer = ask(handler, history)

    (body,) = sent
    assert [t["function"]["name"] for t in body["tools"]] == ["stripe-readonly_list_invoices"]
    assert "temperature" not in body and "max_tokens" not in body
    call = body["messages"][1]["tool_calls"][0]
    assert call["function"]["name"] == "stripe-readonly_list_invoices"
    assert call["id"] == body["messages"][2]["tool_call_id"] == wire_call_id(LONG_ID)
    assert len(call["id"]) <= 40
    assert history[1]["tool_calls"][0]["id"] == LONG_ID  # the caller's history is not changed
    assert [(c.id, c.name) for c in answer.tool_calls] == [
        ("call_1", "stripe-readonly.list_invoices")
    ]
    assert answer.usage == {"promptTokens": 12, "completionTokens": 3}
    assert answer.provider == "primary/openai:gpt-test"


def test_sampling_settings_are_sent_when_the_profile_has_them() -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return completion({"role": "assistant", "content": "ok"})

    request = ModelRequest([{"role": "user", "content": "hi"}], [], 5.0)
    assert model(handler, temperature=0.2, max_tokens=64).complete(request).content == "ok"
    assert (sent[0]["temperature"], sent[0]["max_tokens"]) == (0.2, 64)
    assert "tools" not in sent[0]


def test_missing_and_repeated_call_ids_are_replaced_by_unique_ones() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        calls = [{"id": i, "type": "function", "function": {"name": "x", "arguments": "{}"}}
                 for i in ("", "dup", "dup")]  # fmt: skip
        return completion({"role": "assistant", "content": "", "tool_calls": calls})

    ids = [c.id for c in ask(handler).tool_calls]
    assert ids[1] == "dup" and len(set(ids)) == 3 and all(ids)


@pytest.mark.parametrize(
    ("status", "retryable"), [(429, True), (500, True), (503, True), (400, False), (401, False)]
)
def test_an_http_error_is_retryable_only_for_429_and_5xx(status: int, retryable: bool) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": {"message": "nope", "type": "x"}})

    with pytest.raises(ModelError) as caught:
        ask(handler)
    assert (caught.value.retryable, caught.value.status) == (retryable, status)
    assert str(caught.value).startswith(f"primary/openai:gpt-test: HTTP {status}: ")


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        (httpx.ReadTimeout("slow"), "primary/openai:gpt-test: API"),
        (httpx.ConnectError("refused"), "primary/openai:gpt-test: API"),
    ],
)
def test_timeouts_and_connection_errors_are_retryable(failure: Exception, message: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise failure

    with pytest.raises(ModelError, match=message) as caught:
        ask(handler)
    assert caught.value.retryable


def test_an_address_the_egress_policy_refuses_is_final_and_says_why() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise EgressDenied("169.254.169.254 is link-local (cloud metadata lives there)")

    with pytest.raises(
        ModelError, match=r"egress denied: 169\.254\.169\.254 is link-local"
    ) as caught:
        ask(handler)
    assert not caught.value.retryable


@pytest.mark.parametrize(
    "body",
    [
        {"choices": []},
        {"choices": "not a list"},
        {"choices": [{"message": "not an object"}]},
        {"choices": [{"message": {"tool_calls": ["not an object"]}}]},
        {"choices": [{"message": {"tool_calls": [{"function": "not an object"}]}}]},
        {"choices": [{"message": {"content": "hi"}}], "usage": [1, 2]},
        ["not an object"],
    ],
)
def test_a_malformed_answer_is_a_retryable_error(body: Any) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=body)

    with pytest.raises(ModelError, match="primary/openai:gpt-test: ") as caught:
        ask(handler)
    assert caught.value.retryable


def chunks(*parts: dict[str, Any], done: bool = True) -> httpx.Response:
    text = "".join(f"data: {json.dumps(p)}\n\n" for p in parts) + (
        "data: [DONE]\n\n" if done else ""
    )
    return httpx.Response(200, content=text.encode(), headers={"Content-Type": "text/event-stream"})


def delta(finish: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": fields, "finish_reason": finish}]}


def test_a_streamed_answer_arrives_as_deltas_and_tool_calls_are_assembled() -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return chunks(
            delta(role="assistant", content="Look"),
            delta(content="ing up."),
            delta(tool_calls=[{"index": 1, "id": "call_b", "function": {"name": "other",
                                                                         "arguments": "{}"}}]),
            delta(tool_calls=[{"index": 0, "id": "call_a",
                               "function": {"name": "stripe-readonly_list", "arguments": ""}}]),
            delta(tool_calls=[{"index": 0, "function": {"name": "_invoices",
                                                        "arguments": '{"limit"'}}]),
            delta(tool_calls=[{"index": 0, "function": {"arguments": ": 3}"}}]),
            delta("tool_calls"),
            {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7}},
        )  # fmt: skip

    streamed: list[str] = []
    answer = ask(handler, on_delta=streamed.append)
    assert sent[0]["stream"] is True and sent[0]["stream_options"] == {"include_usage": True}
    assert streamed == ["Look", "ing up."] and answer.content == "Looking up."
    # By index, whatever order the fragments came in; wire names mapped back.
    assert [(c.id, c.name, c.arguments) for c in answer.tool_calls] == [
        ("call_a", "stripe-readonly.list_invoices", '{"limit": 3}'),
        ("call_b", "other", "{}"),
    ]
    assert answer.usage == {"promptTokens": 5, "completionTokens": 7}


def test_a_stream_cut_before_its_finish_is_a_retryable_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return chunks(delta(content="Half an ans"), done=False)

    streamed: list[str] = []
    with pytest.raises(ModelError, match="the stream ended before the answer") as caught:
        ask(handler, on_delta=streamed.append)
    assert caught.value.retryable and streamed == ["Half an ans"]


def test_a_malformed_chunk_is_a_retryable_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return chunks(delta(content="ok"), {"choices": [{"delta": "not an object"}]})

    with pytest.raises(ModelError, match="delta is not an object") as caught:
        ask(handler, on_delta=lambda text: None)
    assert caught.value.retryable


def served(model_server: Any) -> OpenAIChatModel:
    """The adapter as the worker builds it: egress-guarded client, real HTTP to the server."""
    policy = EgressPolicy(schemes=frozenset({"http"}), allow_loopback=True)
    return OpenAIChatModel(
        profile="primary", model="gpt-test", api_key="sk-test", base_url=model_server.url,
        temperature=None, max_tokens=None, http_client=guarded_client(policy),
    )  # fmt: skip


def streamed(adapter: OpenAIChatModel, timeout: float = 5.0) -> ModelResponse:
    request = ModelRequest([{"role": "user", "content": "hi"}], [], timeout, lambda text: None)
    return adapter.complete(request)


def test_streamed_answers_reuse_one_connection(model_server: Any) -> None:
    """openai's sync stream closes the response at `[DONE]` without reading the body's end,
    which dropped the connection: a new one (a TLS handshake, with a real provider) for every
    model call. Fails without the adapter's read to the end."""
    adapter = served(model_server)
    model_server.add({"content": "one"}, {"content": "two", "chunk_delay": 0.15},
                     {"content": "three"})  # fmt: skip
    # The second answer's chunks come 0.15 s apart, over the end-of-stream deadline: the
    # deadline set while reading the first answer's end must not outlive it.
    assert [streamed(adapter).content for _ in range(3)] == ["one", "two", "three"]
    assert model_server.connections == 1


def test_a_provider_that_stalls_after_done_costs_the_connection_not_the_turn(
    model_server: Any,
) -> None:
    adapter = served(model_server)
    model_server.add({"content": "slow end", "stall_after_done": 3}, {"content": "next"})
    started = time.monotonic()
    assert streamed(adapter, timeout=10).content == "slow end"
    assert time.monotonic() - started < 1.5  # not the 3 s stall, nor the 10 s timeout
    assert streamed(adapter).content == "next"
    assert model_server.connections == 2  # the stalled one was dropped, not reused


def test_bytes_after_done_that_are_not_text_do_not_fail_a_complete_answer(
    model_server: Any,
) -> None:
    model_server.add({"content": "intact", "after_done": "data: \xff\xfe\n\n"}, {"content": "next"})
    adapter = served(model_server)
    assert streamed(adapter).content == "intact"
    assert streamed(adapter).content == "next"


def test_a_read_deadline_holds_only_the_thread_that_set_it(model_server: Any) -> None:
    """The pool can give a drained connection to another thread's request before the
    draining thread has left `reads_within`: that request's reads must not inherit the
    deadline."""
    import threading

    client = guarded_client(EgressPolicy(schemes=frozenset({"http"}), allow_loopback=True))
    body = {"model": "gpt-test", "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    model_server.add({"content": "own", "chunk_delay": 0.2},
                     {"content": "other", "chunk_delay": 0.2})  # fmt: skip
    url = f"{model_server.url}/chat/completions"
    headers = {"Authorization": "Bearer sk-test"}
    with (
        client.stream("POST", url, json=body, headers=headers) as response,
        reads_within(response, 0.0) as bounded,
        pytest.raises(httpx.ReadTimeout),
    ):
        assert bounded
        response.read()  # this thread's read: past its deadline
    read: list[bytes] = []
    with (
        client.stream("POST", url, json=body, headers=headers) as response,
        reads_within(response, 0.0),
    ):
        reader = threading.Thread(target=lambda: read.append(response.read()))
        reader.start()
        reader.join(10)
    assert read and read[0].endswith(b"data: [DONE]\n\n")  # the whole body, unhurried


def test_the_guarded_client_keeps_the_cookies_a_server_sets() -> None:
    """It reads a response for cookies only when it has a Set-Cookie header (httpx would
    read every response): a cookie set is still kept and sent back, one set on a response
    that is streamed too, and the client's cookies can be replaced as httpx allows."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Cookie"))
            self.send_response(200)
            if self.path.startswith("/set/"):
                self.send_header("Set-Cookie", f"affinity={self.path[5:]}; Path=/")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        client = guarded_client(EgressPolicy(schemes=frozenset({"http"}), allow_loopback=True))
        jar, read = client.cookies.jar, []
        extract = jar.extract_cookies
        jar.extract_cookies = lambda *args: read.append(1) or extract(*args)  # type: ignore[method-assign]
        client.get(f"{base}/plain")
        client.get(f"{base}/set/a")
        client.get(f"{base}/plain")
        with client.stream("GET", f"{base}/set/b") as response:
            response.read()
        client.get(f"{base}/plain")
        assert len(read) == 2  # the two responses that set one
        client.cookies = {"affinity": "c"}
        client.get(f"{base}/plain")
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [None, None, "affinity=a", "affinity=a", "affinity=b", "affinity=c"]
    assert dict(client.cookies) == {"affinity": "c"}
