"""The request rules of OpenAI's chat completions API, as the test model server enforces them.

Each rule answers what the real API answers for that mistake: status 401 or 400, and an
OpenAI error body whose `message`, `param` and `code` follow the real ones (taken from the
API's published errors and public reports of them). `tests/test_model_server.py` proves each
rule refuses what it must and accepts what the API accepts.

One rule is stricter than OpenAI alone: tool names must be unique within a request, as
Anthropic's and Gemini's OpenAI-compatible endpoints require (Talon supports any
OpenAI-compatible provider).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_-]+$")
MAX_NAME_LENGTH = 64
MAX_CALL_ID_LENGTH = 40
ROLES = ("system", "assistant", "user", "function", "tool", "developer")
REQUEST_FIELDS = {
    "model", "messages", "tools", "tool_choice", "temperature", "top_p", "n", "stream",
    "stream_options", "stop", "max_tokens", "max_completion_tokens", "presence_penalty",
    "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "user", "response_format",
    "seed", "parallel_tool_calls", "store", "metadata", "reasoning_effort", "modalities",
    "audio", "prediction", "service_tier", "web_search_options",
}  # fmt: skip
MESSAGE_FIELDS = {
    "system": {"role", "content", "name"},
    "developer": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "tool_calls", "refusal", "audio", "function_call"},
    "tool": {"role", "content", "tool_call_id"},
    "function": {"role", "content", "name"},
}


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str
    param: str | None = None
    code: str | None = None
    type: str = "invalid_request_error"

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}  # fmt: skip


class _Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal


def _refuse(message: str, param: str | None = None, code: str | None = None) -> None:
    raise _Refused(Refusal(400, message, param, code))


def check_request(
    path: str, authorization: str | None, raw: bytes, api_keys: set[str] | None
) -> Refusal | None:
    """The refusal the real API would answer this request with, or None if it is valid."""
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return Refusal(
            401,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        )
    if api_keys is not None and key.strip() not in api_keys:
        return Refusal(401, f"Incorrect API key provided: {key[:3]}***{key[-4:]}.", None,
                       "invalid_api_key")  # fmt: skip
    if path.rstrip("/") != "/v1/chat/completions":
        return Refusal(404, f"Invalid URL (POST {path})", type="invalid_request_error")
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except ValueError:
        return Refusal(400, "We could not parse the JSON body of your request.")
    try:
        _check_body(body)
    except _Refused as refused:
        return refused.refusal
    return None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_body(body: Any) -> None:
    if not isinstance(body, dict):
        _refuse("We could not parse the JSON body of your request.")
    for field in body:
        if field not in REQUEST_FIELDS:
            _refuse(f"Unrecognized request argument supplied: {field}")
    if not isinstance(body.get("model"), str) or not body["model"]:
        _refuse("you must provide a model parameter")
    messages = body.get("messages")
    if messages is None:
        _refuse("Missing required parameter: 'messages'.", "messages",
                "missing_required_parameter")  # fmt: skip
    _check_array(messages, "messages")
    for index, message in enumerate(messages):
        _check_message(message, f"messages[{index}]")
    _check_pairing(messages)
    _check_tools(body)
    _check_sampling(body)


def _check_array(value: Any, param: str) -> None:
    if not isinstance(value, list):
        _refuse(f"Invalid type for '{param}': expected an array, but got "
                f"{type(value).__name__} instead.", param, "invalid_type")  # fmt: skip
    if not value:
        _refuse(f"Invalid '{param}': empty array. Expected an array with minimum length 1, but "
                "got an empty array instead.", param, "empty_array")  # fmt: skip


def _check_name(value: Any, param: str, limit: int = MAX_NAME_LENGTH) -> None:
    if not isinstance(value, str):
        _refuse(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    if len(value) > limit:
        _refuse(f"Invalid '{param}': string too long. Expected a string with maximum length "
                f"{limit}, but got a string with length {len(value)} instead.", param,
                "string_above_max_length")  # fmt: skip
    if not NAME_PATTERN.match(value):
        _refuse(f"Invalid '{param}': string does not match pattern. Expected a string that "
                f"matches the pattern '{NAME_PATTERN.pattern}'.", param,
                "invalid_value")  # fmt: skip


def _check_content(message: dict[str, Any], param: str, *, nullable: bool) -> None:
    if "content" not in message and not nullable:
        _refuse(f"Missing required parameter: '{param}.content'.", f"{param}.content",
                "missing_required_parameter")  # fmt: skip
    content = message.get("content")
    if content is None and nullable:
        return
    if not isinstance(content, str | list):
        _refuse(f"Invalid type for '{param}.content': expected one of a string or array of "
                f"objects, but got {_json_type(content)} instead.", f"{param}.content",
                "invalid_type")  # fmt: skip


def _check_message(message: Any, param: str) -> None:
    if not isinstance(message, dict):
        _refuse(f"Invalid type for '{param}': expected an object, but got "
                f"{_json_type(message)} instead.", param, "invalid_type")  # fmt: skip
    role = message.get("role")
    if role is None:
        _refuse(f"Missing required parameter: '{param}.role'.", f"{param}.role",
                "missing_required_parameter")  # fmt: skip
    if role not in ROLES:
        _refuse(f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', "
                "'user', 'function', 'tool', and 'developer'.", f"{param}.role",
                "invalid_value")  # fmt: skip
    extra = sorted(set(message) - MESSAGE_FIELDS[role])
    if extra:
        _refuse(f"Additional properties are not allowed ('{extra[0]}' was unexpected) - "
                f"'{param}'", f"{param}")  # fmt: skip
    calls = message.get("tool_calls")
    _check_content(message, param, nullable=role == "assistant" and bool(calls))
    if role == "tool":
        if not isinstance(message.get("tool_call_id"), str):
            _refuse(f"Missing required parameter: '{param}.tool_call_id'.",
                    f"{param}.tool_call_id", "missing_required_parameter")  # fmt: skip
        _check_call_id(message["tool_call_id"], f"{param}.tool_call_id")
    if calls is not None:
        _check_array(calls, f"{param}.tool_calls")
        for index, call in enumerate(calls):
            _check_call(call, f"{param}.tool_calls[{index}]")


def _check_call_id(value: str, param: str) -> None:
    if len(value) > MAX_CALL_ID_LENGTH:
        _refuse(f"Invalid '{param}': string too long. Expected a string with maximum length "
                f"{MAX_CALL_ID_LENGTH}, but got a string with length {len(value)} instead.",
                param, "string_above_max_length")  # fmt: skip


def _check_call(call: Any, param: str) -> None:
    if not isinstance(call, dict):
        _refuse(f"Invalid type for '{param}': expected an object.", param, "invalid_type")
    if not isinstance(call.get("id"), str):
        _refuse(f"Missing required parameter: '{param}.id'.", f"{param}.id",
                "missing_required_parameter")  # fmt: skip
    _check_call_id(call["id"], f"{param}.id")
    if call.get("type") != "function":
        _refuse(f"Missing required parameter: '{param}.type'.", f"{param}.type",
                "missing_required_parameter")  # fmt: skip
    function = call.get("function")
    if not isinstance(function, dict):
        _refuse(f"Missing required parameter: '{param}.function'.", f"{param}.function",
                "missing_required_parameter")  # fmt: skip
    _check_name(function.get("name"), f"{param}.function.name")
    if not isinstance(function.get("arguments"), str):
        _refuse(f"Missing required parameter: '{param}.function.arguments'.",
                f"{param}.function.arguments", "missing_required_parameter")  # fmt: skip


_STRAY_TOOL = (
    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
    "with 'tool_calls'."
)
_UNANSWERED = (
    "An assistant message with 'tool_calls' must be followed by tool messages responding to "
    "each 'tool_call_id'. The following tool_call_ids did not have response messages: "
)


def _check_pairing(messages: list[dict[str, Any]]) -> None:
    """An assistant message with tool_calls is followed by one tool message per call id,
    before any other message; a tool message answers such a call."""
    index = 0
    while index < len(messages):
        message = messages[index]
        if message["role"] == "tool":
            _refuse(_STRAY_TOOL, f"messages.[{index}].role")
        index += 1
        if message["role"] != "assistant" or not message.get("tool_calls"):
            continue
        pending = [call["id"] for call in message["tool_calls"]]
        answered: set[str] = set()
        while index < len(messages) and messages[index]["role"] == "tool":
            call_id = messages[index]["tool_call_id"]
            if call_id not in pending or call_id in answered:
                _refuse(_STRAY_TOOL, f"messages.[{index}].role")
            answered.add(call_id)
            index += 1
        missing = [call_id for call_id in pending if call_id not in answered]
        if missing:
            _refuse(_UNANSWERED + ", ".join(missing), f"messages.[{index}].role")


def _check_tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is None:
        if "tool_choice" in body:
            _refuse("Invalid value for 'tool_choice': 'tool_choice' is only allowed when "
                    "'tools' are specified.", "tool_choice")  # fmt: skip
        return
    _check_array(tools, "tools")
    names: set[str] = set()
    for index, tool in enumerate(tools):
        param = f"tools[{index}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            _refuse(f"Missing required parameter: '{param}.type'.", f"{param}.type",
                    "missing_required_parameter")  # fmt: skip
        function = tool.get("function")
        if not isinstance(function, dict):
            _refuse(f"Missing required parameter: '{param}.function'.", f"{param}.function",
                    "missing_required_parameter")  # fmt: skip
        name = function.get("name")
        _check_name(name, f"{param}.function.name")
        if name in names:
            _refuse(f"Invalid '{param}.function.name': tool names must be unique ({name!r}).",
                    f"{param}.function.name", "invalid_value")  # fmt: skip
        names.add(name)
        parameters = function.get("parameters")
        if parameters is not None and (
            not isinstance(parameters, dict) or parameters.get("type") != "object"
        ):
            kind = parameters.get("type") if isinstance(parameters, dict) else None
            _refuse(f"Invalid schema for function '{name}': schema must be a JSON Schema of "
                    f"'type: \"object\"', got 'type: \"{kind}\"'.", f"{param}.function.parameters",
                    "invalid_function_parameters")  # fmt: skip


def _check_sampling(body: dict[str, Any]) -> None:
    if "stream_options" in body and not body.get("stream"):
        _refuse("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "stream_options", "invalid_value")  # fmt: skip
    temperature = body.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, int | float) or isinstance(temperature, bool):
            _refuse("Invalid type for 'temperature': expected a decimal.", "temperature",
                    "invalid_type")  # fmt: skip
        if temperature < 0:
            _refuse("Invalid 'temperature': decimal below minimum value. Expected a value >= 0,"
                    f" but got {temperature} instead.", "temperature",
                    "decimal_below_min_value")  # fmt: skip
        if temperature > 2 or math.isnan(temperature):
            _refuse("Invalid 'temperature': decimal above maximum value. Expected a value <= 2,"
                    f" but got {temperature} instead.", "temperature",
                    "decimal_above_max_value")  # fmt: skip
    for field in ("max_tokens", "max_completion_tokens"):
        value = body.get(field)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 1):  # fmt: skip
            _refuse(f"Invalid '{field}': integer below minimum value. Expected a value >= 1, "
                    f"but got {value} instead.", field, "integer_below_min_value")  # fmt: skip


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "decimal", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)  # fmt: skip
