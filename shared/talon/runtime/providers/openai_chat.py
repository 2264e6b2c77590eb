"""The `openai` provider: any OpenAI-compatible chat completions endpoint via the openai client."""

from __future__ import annotations

import json
from typing import Any

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from talon.runtime.providers.base import (
    ModelError,
    ModelRequest,
    ModelResponse,
    ToolCall,
)


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
    ) -> None:
        self.label = f"{profile}/openai:{model}"
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        # Retries are ours (policy-driven, across profiles), so the client must not add its own.
        # Requests go through `client.post` (the client's documented way to send a raw body):
        # `chat.completions.create` re-walks every history message with typing introspection,
        # which cost ~13 ms per call at 80 messages against ~1 ms for the whole HTTP exchange.
        self._client = openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0)

    def complete(self, request: ModelRequest) -> ModelResponse:
        kwargs: dict[str, Any] = {"model": self.model, "messages": request.messages}
        if request.tools:
            kwargs["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
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
                return self._stream(kwargs, request)
            completion = self._client.post(
                "/chat/completions",
                body=kwargs,
                cast_to=ChatCompletion,
                options={"timeout": max(0.1, request.timeout)},
            )
        except openai.APIStatusError as exc:
            retryable = exc.status_code == 429 or exc.status_code >= 500
            raise ModelError(
                f"{self.label}: HTTP {exc.status_code}: {_short(exc.message)}",
                retryable=retryable,
                status=exc.status_code,
            ) from exc
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            raise ModelError(f"{self.label}: {type(exc).__name__}", retryable=True) from exc
        if not completion.choices:
            raise ModelError(f"{self.label}: the response has no choices", retryable=True)
        message = completion.choices[0].message
        calls = [
            ToolCall(c.id, c.function.name, c.function.arguments or "{}")
            for c in (message.tool_calls or [])
            if getattr(c, "function", None) is not None
        ]
        usage = {}
        if completion.usage is not None:
            usage = {
                "promptTokens": completion.usage.prompt_tokens,
                "completionTokens": completion.usage.completion_tokens,
            }
        return ModelResponse(message.content or "", calls, self.label, usage)

    def _stream(self, kwargs: dict[str, Any], request: ModelRequest) -> ModelResponse:
        """Streamed completion: text deltas go to `request.on_delta` as they arrive; tool call
        fragments are assembled by index."""
        assert request.on_delta is not None
        stream = self._client.post(
            "/chat/completions",
            body={**kwargs, "stream": True, "stream_options": {"include_usage": True}},
            cast_to=ChatCompletionChunk,
            options={"timeout": max(0.1, request.timeout)},
            stream=True,
            stream_cls=openai.Stream[ChatCompletionChunk],
        )
        text: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        usage: dict[str, int] = {}
        finished = False
        for chunk in stream:
            if chunk.usage is not None:
                usage = {
                    "promptTokens": chunk.usage.prompt_tokens,
                    "completionTokens": chunk.usage.completion_tokens,
                }
            if not chunk.choices:
                continue
            finished = finished or chunk.choices[0].finish_reason is not None
            delta = chunk.choices[0].delta
            if delta.content:
                text.append(delta.content)
                request.on_delta(delta.content)
            for part in delta.tool_calls or []:
                call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
                call["id"] = part.id or call["id"]
                if part.function is not None:
                    call["name"] += part.function.name or ""
                    call["arguments"] += part.function.arguments or ""
        if not finished:
            # A dropped connection can end the stream quietly; a cut answer is not an answer.
            raise ModelError(f"{self.label}: the stream ended before the answer", retryable=True)
        tool_calls = [
            ToolCall(c["id"], c["name"], c["arguments"] or "{}") for _, c in sorted(calls.items())
        ]
        return ModelResponse("".join(text), tool_calls, self.label, usage)


def _short(text: Any) -> str:
    if not isinstance(text, str):
        text = json.dumps(text)
    return text if len(text) <= 200 else text[:199] + "…"
