"""The `openai` provider: any OpenAI-compatible chat completions endpoint via the openai client."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any, TypeVar

import httpx
import openai

from talon.runtime.providers.base import (
    ModelError,
    ModelRequest,
    ModelResponse,
    ToolCall,
)
from talon.runtime.providers.wire_names import WireNames, wire_call_id, wire_names
from talon.tenancy.egress import EgressDenied
from talon.tenancy.http_guard import reads_within

_T = TypeVar("_T")

# How long the end of a streamed answer may take after its `[DONE]` (openai's async stream
# drains within the same 0.1 s).
_END_OF_STREAM_SECONDS = 0.1


class OpenAIChatModel:
    def __init__(
        self,
        *,
        profile: str,
        model: str,
        api_key: str,
        base_url: str | None,
        temperature: float | None,
        max_tokens: int | None,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.label = f"{profile}/openai:{model}"
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        # Retries are ours (policy-driven, across profiles), so the client must not add its own.
        # Requests go through `client.post` (the client's documented way to send a raw body):
        # `chat.completions.create` re-walks every history message with typing introspection,
        # which cost ~13 ms per call at 80 messages against ~1 ms for the whole HTTP exchange.
        # `http_client` enforces the egress policy on every connection (tenancy/http_guard).
        self._client = openai.OpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            # Typed as httpx2.Client, but openai 3.x takes an httpx.Client as well (its
            # `is_legacy_httpx_sync_client`); the egress-guarded transport is an httpx one.
            http_client=http_client,  # type: ignore[arg-type]
        )

    def complete(self, request: ModelRequest) -> ModelResponse:
        names = wire_names([t.name for t in request.tools] + _called_names(request.messages))
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": _messages_on_wire(request.messages, names),
        }
        if request.tools:
            kwargs["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": names.wire(t.name),
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in request.tools
            ]
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature
        if self.max_tokens is not None:
            kwargs["max_tokens"] = self.max_tokens
        try:
            if request.on_delta is not None:
                return self._stream(kwargs, request, names)
            completion = self._client.post(
                "/chat/completions",
                body=kwargs,
                cast_to=object,  # the JSON as parsed: see `_stream`
                options={"timeout": max(0.1, request.timeout)},
            )
        except openai.APIStatusError as exc:
            retryable = exc.status_code == 429 or exc.status_code >= 500
            raise ModelError(
                f"{self.label}: HTTP {exc.status_code}: {_short(exc.message)}",
                retryable=retryable,
                status=exc.status_code,
            ) from exc
        except EgressDenied as exc:  # policy, not weather: no retry
            raise ModelError(f"{self.label}: egress denied: {exc}", retryable=False) from exc
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            if isinstance(exc.__cause__, EgressDenied):  # the client may wrap it
                raise ModelError(f"{self.label}: egress denied: {exc.__cause__}",
                                 retryable=False) from exc  # fmt: skip
            raise ModelError(f"{self.label}: {type(exc).__name__}", retryable=True) from exc
        except openai.APIError as exc:  # an `{"error": ...}` event in the middle of a stream
            raise ModelError(f"{self.label}: the provider reported an error: "
                             f"{_short(exc.message)}", retryable=True) from exc  # fmt: skip
        except ValueError as exc:  # a body or an event that is not JSON
            raise ModelError(f"{self.label}: malformed response (not JSON)",
                             retryable=True) from exc  # fmt: skip
        choices = _list(completion, "choices", self.label)
        if not choices:
            raise ModelError(f"{self.label}: the response has no choices", retryable=True)
        message = _dict(choices[0], "message", self.label)
        calls = []
        for call in _list(message, "tool_calls", self.label):
            if not isinstance(call, dict):
                raise ModelError(f"{self.label}: malformed tool call", retryable=True)
            function = _dict(call, "function", self.label)
            calls.append((str(call.get("id") or ""), str(function.get("name") or ""),
                          str(function.get("arguments") or "{}")))  # fmt: skip
        return ModelResponse(
            str(message.get("content") or ""),
            _tool_calls(calls, names),
            self.label,
            _usage(completion, self.label),
        )

    def _stream(
        self, kwargs: dict[str, Any], request: ModelRequest, names: WireNames
    ) -> ModelResponse:
        """Streamed completion: text deltas go to `request.on_delta` as they arrive; tool call
        fragments are assembled by index."""
        assert request.on_delta is not None
        # Chunks as parsed JSON, every field checked here: the typed models cost more to build
        # than the rest of the exchange, and even `dict` has openai copy each chunk through
        # `construct_type` (~14 us a chunk, a chunk per token with a real provider); `object`
        # is the one type it hands over untouched.
        stream = self._client.post(
            "/chat/completions",
            body={**kwargs, "stream": True, "stream_options": {"include_usage": True}},
            cast_to=object,
            options={"timeout": max(0.1, request.timeout)},
            stream=True,
            stream_cls=_ReusedStream[object],
        )
        text: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        usage: dict[str, int] = {}
        finished = False
        # Closed on every path: a stream abandoned on a malformed chunk and left to the garbage
        # collector can be finalised while this thread holds the connection pool's lock
        # (httpcore's lock is not reentrant), which deadlocks the next request.
        with stream:
            for chunk in stream:
                usage = _usage(chunk, self.label) or usage
                choices = _list(chunk, "choices", self.label)
                if not choices:
                    continue
                choice = choices[0] if isinstance(choices[0], dict) else {}
                finished = finished or choice.get("finish_reason") is not None
                delta = _dict(choice, "delta", self.label)
                content = delta.get("content")
                if content:
                    text.append(str(content))
                    request.on_delta(str(content))
                for part in _list(delta, "tool_calls", self.label):
                    if not isinstance(part, dict):
                        raise ModelError(f"{self.label}: malformed tool call", retryable=True)
                    index = part.get("index")
                    if not isinstance(index, int):
                        index = 0
                    call = calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
                    call["id"] = str(part.get("id") or call["id"])
                    function = _dict(part, "function", self.label)
                    call["name"] += str(function.get("name") or "")
                    call["arguments"] += str(function.get("arguments") or "")
        if not finished:
            # A dropped connection can end the stream quietly; a cut answer is not an answer.
            raise ModelError(f"{self.label}: the stream ended before the answer", retryable=True)
        parts = [(c["id"], c["name"], c["arguments"] or "{}") for _, c in sorted(calls.items())]
        return ModelResponse("".join(text), _tool_calls(parts, names), self.label, usage)


class _ReusedStream(openai.Stream[_T]):
    """openai's sync stream stops reading at `[DONE]` and closes the response, so an HTTP/1.1
    connection never went back to the pool: every streamed model call opened a new one (a TLS
    handshake to the provider per model step). This one reads the rest of the body first,
    within `_END_OF_STREAM_SECONDS`, as openai's async stream does; a provider that stalls
    after `[DONE]` costs the connection, not the turn."""

    def _iter_events(self) -> Iterator[Any]:
        events = super()._iter_events()
        for event in events:
            if event.data.startswith("[DONE]"):
                _read_to_end(self.response, events)
            yield event


def _read_to_end(response: Any, events: Iterator[Any]) -> None:
    # Nothing after `[DONE]` changes an answer that is already complete: a timeout, a
    # transport error or bytes the SSE decoder refuses (invalid UTF-8) only cost the
    # connection, which the failed read closes.
    with (
        contextlib.suppress(Exception),
        reads_within(response, _END_OF_STREAM_SECONDS) as bounded,
    ):
        if bounded:
            for _ in events:
                pass


def _called_names(messages: list[dict[str, Any]]) -> list[str]:
    """Tool names the history's assistant messages called (a tool may be gone since)."""
    return [
        call["function"]["name"] for message in messages for call in message.get("tool_calls") or ()
    ]


def _messages_on_wire(messages: list[dict[str, Any]], names: WireNames) -> list[dict[str, Any]]:
    """The history with tool names and call ids as the provider accepts them; messages
    without tool calls are sent as they are (no copy)."""
    wired = []
    for message in messages:
        if message.get("tool_calls"):
            calls = [
                {**call, "id": wire_call_id(call["id"]),
                 "function": {**call["function"], "name": names.wire(call["function"]["name"])}}
                for call in message["tool_calls"]
            ]  # fmt: skip
            message = {**message, "tool_calls": calls}
        elif message.get("tool_call_id"):
            message = {**message, "tool_call_id": wire_call_id(message["tool_call_id"])}
        wired.append(message)
    return wired


def _tool_calls(parts: list[tuple[str, str, str]], names: WireNames) -> list[ToolCall]:
    """The model's calls with registry names; a missing or repeated id gets a fresh one, so
    each call's result can be paired with it."""
    seen: set[str] = set()
    calls = []
    for call_id, name, arguments in parts:
        if not call_id or call_id in seen:
            call_id = f"call_{uuid.uuid4().hex}"
        seen.add(call_id)
        calls.append(ToolCall(call_id, names.registry(name), arguments))
    return calls


def _dict(value: Any, key: str, label: str) -> dict[str, Any]:
    """`value[key]` as a dict ({} when absent); anything else is a malformed response."""
    if not isinstance(value, dict):
        raise ModelError(f"{label}: malformed response (expected an object)", retryable=True)
    found = value.get(key)
    if found is None:
        return {}
    if not isinstance(found, dict):
        raise ModelError(f"{label}: malformed response ({key} is not an object)", retryable=True)
    return found


def _list(value: Any, key: str, label: str) -> list[Any]:
    """`value[key]` as a list ([] when absent); anything else is a malformed response."""
    if not isinstance(value, dict):
        raise ModelError(f"{label}: malformed response (expected an object)", retryable=True)
    found = value.get(key)
    if found is None:
        return []
    if not isinstance(found, list):
        raise ModelError(f"{label}: malformed response ({key} is not a list)", retryable=True)
    return found


def _usage(value: Any, label: str) -> dict[str, int]:
    usage = _dict(value, "usage", label)
    if not usage:
        return {}

    def count(name: str) -> int:
        value = usage.get(name)
        return value if isinstance(value, int) else 0

    return {"promptTokens": count("prompt_tokens"), "completionTokens": count("completion_tokens")}


def _short(text: Any) -> str:
    if not isinstance(text, str):
        text = json.dumps(text)
    return text if len(text) <= 200 else text[:199] + "…"
