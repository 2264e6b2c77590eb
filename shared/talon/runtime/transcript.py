"""The history a model sees, kept valid: every assistant message with tool calls is followed
by exactly one tool message per call id, in call order, before anything else.

Providers refuse any other shape with a 400 on every request, which would stall a session
for good. Talon writes a turn's messages in one transaction, so a stored history should
already be well formed; this is the guard for what should not happen (a history written by an
older version, a window that starts inside a turn, a provider that repeated a call id): a call
without a result gets an error result, a result without its call is dropped.
"""

from __future__ import annotations

from typing import Any

MISSING_RESULT = "error: no result was recorded for this tool call"


def paired(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`messages` (OpenAI chat format) with every tool call answered once and no stray tool
    messages. Returns the same list object when nothing needed fixing."""
    out: list[dict[str, Any]] = []
    changed = False
    index = 0
    while index < len(messages):
        message = messages[index]
        index += 1
        if message.get("role") == "tool":
            changed = True  # a result with no call right before it
            continue
        calls = message.get("tool_calls") or []
        if message.get("role") != "assistant" or not calls:
            out.append(message)
            continue
        results: dict[str, dict[str, Any]] = {}
        while index < len(messages) and messages[index].get("role") == "tool":
            result = messages[index]
            index += 1
            call_id = result.get("tool_call_id")
            if call_id in results or not any(c["id"] == call_id for c in calls):
                changed = True  # a repeated or unknown result
                continue
            results[str(call_id)] = result
        unique_calls = _first_of_each_id(calls)
        if len(unique_calls) != len(calls):
            changed = True
            message = {**message, "tool_calls": unique_calls}
        out.append(message)
        for call in unique_calls:
            answer = results.get(call["id"])
            if answer is None:
                changed = True
                answer = {"role": "tool", "content": MISSING_RESULT, "tool_call_id": call["id"]}
            out.append(answer)
        if [r["tool_call_id"] for r in results.values()] != [c["id"] for c in unique_calls]:
            changed = True  # reordered to follow the calls
    return out if changed else messages


def _first_of_each_id(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    first: dict[str, dict[str, Any]] = {}
    for call in calls:
        first.setdefault(call["id"], call)
    return list(first.values())
