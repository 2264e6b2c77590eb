"""Tool names and call ids on the wire: registry names mapped to names every provider accepts,
mapped back when the model calls them; through the real openai client and the strict model
server, which refuses what OpenAI refuses."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest

from openai_rules import MAX_CALL_ID_LENGTH, NAME_PATTERN
from talon.runtime.failover import complete_with_policy
from talon.runtime.providers.base import ModelRequest, ModelResponse, ToolSpec
from talon.runtime.providers.wire_names import wire_call_id, wire_names
from test_models import FAST_RETRY, clients_for, policy

SEED_NAMES = ["stripe-readonly.list_invoices", "skill.renewal-outreach", "talon.current_time"]
LONG = "stripe-readonly." + "list_every_open_invoice_of_the_customer_" * 3  # 136 characters
LONG_TWIN = LONG[:-1] + "X"  # differs only in its last character


def legal(name: str) -> bool:
    return bool(NAME_PATTERN.match(name)) and len(name) <= 64


@pytest.mark.fast
def test_legal_names_are_sent_unchanged_and_dotted_ones_sanitised() -> None:
    names = wire_names(["get_renewals", "list-invoices", *SEED_NAMES])
    assert names.wire("get_renewals") == "get_renewals"
    assert names.wire("list-invoices") == "list-invoices"
    assert [names.wire(n) for n in SEED_NAMES] == [
        "stripe-readonly_list_invoices", "skill_renewal-outreach", "talon_current_time"
    ]  # fmt: skip
    for name in SEED_NAMES:
        assert names.registry(names.wire(name)) == name


@pytest.mark.fast
def test_names_differing_only_in_dot_and_underscore_stay_apart() -> None:
    names = wire_names(["crm.get_account", "crm_get_account", "crm.get.account"])
    wired = [names.wire(n) for n in ("crm.get_account", "crm_get_account", "crm.get.account")]
    assert wired[1] == "crm_get_account"  # the legal one keeps its name
    assert len(set(wired)) == 3 and all(legal(w) for w in wired)
    assert wired[0].startswith("crm_get_account_") and wired[2].startswith("crm_get_account_")
    for name, wire in zip(("crm.get_account", "crm_get_account", "crm.get.account"), wired,
                          strict=True):  # fmt: skip
        assert names.registry(wire) == name


@pytest.mark.fast
def test_names_of_100_characters_get_distinct_short_forms() -> None:
    long_names = ["a" * 100, "a" * 99 + "b", LONG, LONG_TWIN]
    names = wire_names(long_names)
    wired = [names.wire(n) for n in long_names]
    assert all(legal(w) and len(w) == 64 for w in wired), wired
    assert len(set(wired)) == 4
    assert wired[0].startswith("a" * 55 + "_")  # readable prefix, then a hash of the name


@pytest.mark.fast
def test_the_mapping_depends_on_the_set_of_names_not_their_order() -> None:
    pool = [*SEED_NAMES, "a.b", "a_b", "a-b", LONG, LONG_TWIN, "x" * 80]
    first = wire_names(pool).to_wire
    for seed in range(5):
        shuffled = pool[:]
        random.Random(seed).shuffle(shuffled)
        assert wire_names(shuffled + shuffled[:3]).to_wire == first


@pytest.mark.fast
def test_long_or_odd_call_ids_get_a_stable_short_form() -> None:
    assert wire_call_id("call_abc123") == "call_abc123"
    for odd in ("x" * 41, "ws_689e2d4880a0819d98acca37694989b00b15d90494fc6b87", "toolu:01/ab", ""):
        wired = wire_call_id(odd)
        assert len(wired) <= MAX_CALL_ID_LENGTH and legal(wired)
        assert wire_call_id(odd) == wired  # the same on the call and on its result
    assert wire_call_id("x" * 41) != wire_call_id("x" * 42)


# --- through the openai adapter and the strict server ------------------------------------


def tool(name: str) -> ToolSpec:
    return ToolSpec(name, f"The {name} tool.", {"type": "object", "properties": {}})


def complete(url: str, messages: list[dict[str, Any]], tools: list[ToolSpec],
             *, streamed: bool = False) -> ModelResponse:  # fmt: skip
    model_policy = policy(url, "primary")
    clients = clients_for(model_policy)
    deltas: list[str] = []
    request = ModelRequest(messages, tools, 10, deltas.append if streamed else None)
    return complete_with_policy(clients, FAST_RETRY, request, deadline=time.monotonic() + 10)


@pytest.mark.parametrize("streamed", [False, True])
def test_registry_names_reach_the_model_legal_and_come_back_as_registry_names(
    model_server: Any, streamed: bool
) -> None:
    registry = [*SEED_NAMES, "crm.get_account", "crm_get_account", LONG, LONG_TWIN]
    wired = wire_names(registry)
    model_server.add({"tool_calls": [{"name": wired.wire(n)} for n in registry]})
    response = complete(model_server.url, [{"role": "user", "content": "go"}],
                        [tool(n) for n in registry], streamed=streamed)  # fmt: skip
    sent = [t["function"]["name"] for t in model_server.requests[0]["tools"]]
    assert all(legal(n) for n in sent) and len(set(sent)) == len(registry)
    assert [c.name for c in response.tool_calls] == registry


def test_a_history_with_dotted_names_and_foreign_call_ids_is_accepted(model_server: Any) -> None:
    """A history written by another provider (ids longer than OpenAI's 40 characters) and
    calls to a tool this turn no longer offers are sent in a form the API accepts."""
    foreign_id = "toolu_" + "9" * 60
    history = [
        {"role": "user", "content": "invoices?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": foreign_id, "type": "function",
             "function": {"name": "stripe-readonly.list_invoices", "arguments": "{}"}},
            {"id": "call_2", "type": "function",
             "function": {"name": "retired.tool", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": foreign_id, "content": "[]"},
        {"role": "tool", "tool_call_id": "call_2", "content": "gone"},
        {"role": "user", "content": "and now?"},
    ]  # fmt: skip
    complete(model_server.url, history, [tool("stripe-readonly.list_invoices")])
    sent = model_server.requests[0]["messages"]
    call = sent[1]["tool_calls"][0]
    assert call["function"]["name"] == "stripe-readonly_list_invoices"
    assert sent[2]["tool_call_id"] == call["id"] == wire_call_id(foreign_id)
    assert sent[1]["tool_calls"][1]["function"]["name"] == "retired_tool"
    assert history[1]["tool_calls"][0]["id"] == foreign_id  # the caller's history is untouched


def test_missing_and_repeated_call_ids_from_a_provider_are_made_unique(model_server: Any) -> None:
    model_server.add({"tool_calls": [{"name": "a", "id": ""}, {"name": "b", "id": "call_0"},
                                     {"name": "a", "id": "call_0"}]})  # fmt: skip
    response = complete(model_server.url, [{"role": "user", "content": "go"}],
                        [tool("a"), tool("b")])  # fmt: skip
    ids = [c.id for c in response.tool_calls]
    assert ids[1] == "call_0" and len(set(ids)) == 3 and all(ids)
    assert json.loads(response.tool_calls[0].arguments) == {}
