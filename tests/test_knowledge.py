"""Namespace knowledge: documents chunked and indexed with PostgreSQL full-text search when
written, the best chunks for a turn's input retrieved into its context, the documents used
shown in the stream, and no namespace ever reading another's."""

from __future__ import annotations

from typing import Any

import pytest

import samples
from conftest import Api, read_stream
from talon import entrypoints
from talon.knowledge.chunking import CHUNK_CHARS, chunk_document
from talon.knowledge.index import retrieve

PLAYBOOK = """# Renewal playbook

Start follow-ups 14 days before the renewal date.

## Discounts

Never offer a discount above 10% without the owner's approval.

## Payments

Escalate accounts with a failed payment in the last 30 days.
"""
TRAVEL = "# Travel policy\n\nBook economy class for flights under six hours."


def test_markdown_is_chunked_by_section_with_its_headings() -> None:
    chunks = chunk_document("Playbook", PLAYBOOK)
    assert [(c.index, c.heading) for c in chunks] == [
        (0, "Playbook > Renewal playbook"),
        (1, "Playbook > Renewal playbook > Discounts"),
        (2, "Playbook > Renewal playbook > Payments"),
    ]
    assert chunks[1].content == "Never offer a discount above 10% without the owner's approval."


def test_long_sections_are_split_into_bounded_chunks() -> None:
    sentence = "Every renewal needs a named owner and a date. "
    chunks = chunk_document("", "# Big\n\n" + sentence * 200)
    assert len(chunks) > 1
    assert all(len(c.content) <= CHUNK_CHARS for c in chunks)
    assert "".join(c.content.replace(" ", "") for c in chunks) == (sentence * 200).replace(" ", "")
    assert chunk_document("", "plain text, no headings", "text/plain")[0].heading == ""


@pytest.fixture
def two_namespaces(api: Api) -> Api:
    for ns, name, content in (("acme", "playbook", PLAYBOOK), ("globex", "travel", TRAVEL)):
        api.ok("POST", "/v1/namespaces", 201, json=samples.namespace(ns))
        api.ok("POST", f"/v1/ns/{ns}/knowledge", 201,
               json=samples.knowledge(ns, name=name, content=content))  # fmt: skip
    # The same words in the other namespace must never be found from acme.
    api.ok("POST", "/v1/ns/globex/knowledge", 201,
           json=samples.knowledge("globex", name="discounts", content="Discount approval: "
                                  "globex gives any discount its sales team wants."))  # fmt: skip
    return api


def _retrieve(namespace: str, query: str) -> dict:
    with entrypoints.services().db.transaction() as tx:
        return retrieve(tx, namespace, query, budget_chars=32_000)


def test_retrieval_ranks_the_matching_chunks_of_the_namespace(two_namespaces: Api) -> None:
    found = _retrieve("acme", "Can I offer this customer a discount?")
    assert found["documents"] == [{"name": "playbook", "resourceVersion": found["documents"][0][
        "resourceVersion"], "chunks": [1]}]  # fmt: skip
    assert "above 10%" in found["context"] and "globex" not in found["context"]
    assert _retrieve("acme", "flights economy class") == {"documents": [], "context": ""}
    assert _retrieve("globex", "flights")["documents"][0]["name"] == "travel"
    assert _retrieve("acme", "the and of") == {"documents": [], "context": ""}  # stop words


def test_updates_and_deletes_reindex(two_namespaces: Api) -> None:
    content = "# Renewals\n\nUpsell the premium support plan."
    two_namespaces.ok(
        "PATCH", "/v1/ns/acme/knowledge/playbook", json={"spec": {"content": content}}
    )
    assert _retrieve("acme", "discount")["documents"] == []
    assert _retrieve("acme", "premium support")["documents"][0]["chunks"] == [0]
    two_namespaces.ok("DELETE", "/v1/ns/acme/knowledge/playbook")
    assert _retrieve("acme", "premium support")["documents"] == []


def test_documents_indexed_before_the_index_existed_are_found(two_namespaces: Api) -> None:
    with entrypoints.services().db.transaction() as tx:
        tx.execute("DELETE FROM knowledge_chunks")  # as after the migration that added it
    assert _retrieve("acme", "discount")["documents"][0]["name"] == "playbook"


def _ask_acme(api: Api, question: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Post `question` to a new acme session and read its turn to the end: the accepted
    message and the turn's load-knowledge step event."""
    sessions = "/v1/ns/acme/agents/bot/sessions"
    api.ok("POST", sessions, 201, json={"id": "k"})
    accepted = api.ok("POST", f"{sessions}/k/message", 202, json={"content": question})
    events = read_stream(api, f"{sessions}/k/stream", last_event_id=accepted["streamFrom"],
                         params={"untilTurnEnd": "true"})  # fmt: skip
    loaded = next(e for e in events if e["type"] == "step.completed"
                  and e["data"]["step"] == "load-knowledge")  # fmt: skip
    return accepted, loaded


def test_the_turn_loads_matching_knowledge_and_the_stream_names_it(
    two_namespaces: Api, start_worker
) -> None:
    api = two_namespaces
    api.ok("POST", "/v1/apply", json={"items": [samples.template("acme"), samples.agent("acme")]})
    start_worker(demo_fallback=True)
    accepted, loaded = _ask_acme(api, "What discount may I offer?")
    assert [(d["name"], d["chunks"]) for d in loaded["data"]["documents"]] == [("playbook", [1])]
    with entrypoints.services().db.transaction() as tx:  # what the model was given
        output = tx.scalar(
            "SELECT output FROM turn_steps WHERE turn_id = %s AND name = 'load-knowledge'",
            (accepted["turnId"],),
        )
    assert "above 10%" in output["context"] and "Book economy" not in output["context"]


def test_a_turn_indexes_documents_the_index_missed_before_it_retrieves(
    two_namespaces: Api, start_worker
) -> None:
    """The retrieval travels with the turn's claim; when it finds documents without chunks
    (written before the index existed), the turn indexes them and looks again."""
    api = two_namespaces
    api.ok("POST", "/v1/apply", json={"items": [samples.template("acme"), samples.agent("acme")]})
    with entrypoints.services().db.transaction() as tx:
        tx.execute("DELETE FROM knowledge_chunks")
    start_worker(demo_fallback=True)
    _, loaded = _ask_acme(api, "What discount may I offer?")
    assert [(d["name"], d["chunks"]) for d in loaded["data"]["documents"]] == [("playbook", [1])]
    with entrypoints.services().db.transaction() as tx:  # acme's, indexed by the turn
        assert tx.scalar("SELECT count(*) FROM knowledge_chunks WHERE namespace = 'acme'") > 0
        assert tx.scalar("SELECT count(*) FROM knowledge_chunks WHERE namespace = 'globex'") == 0
