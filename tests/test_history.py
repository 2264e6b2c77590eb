"""Histories sent to the model are always valid: each assistant message with tool calls is
followed by exactly one tool message per call id before anything else. Checked by the strict
model server on every request (the `model_server` fixture fails a test on any refusal) after
failover between profiles, cancellation during a tool call and with 1,000 messages; crashes
and interrupted calls are covered the same way by tests/test_crash.py."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from conftest import Api, read_stream
from talon.runtime.providers.base import ToolSpec
from talon.runtime.tools.base import AgentContext, ToolResult, Toolset
from talon.runtime.transcript import MISSING_RESULT, paired
from test_models import _agent_with_policy, policy

BASE = "/v1/ns/acme/agents/bot/sessions/s1"


def call(call_id: str, name: str = "get_renewals") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}


def result(call_id: str, content: str = "[]") -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def asks(*ids: str) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": [call(i) for i in ids]}


USER = {"role": "user", "content": "hi"}


# --- the guard, on its own -----------------------------------------------------------------


@pytest.mark.fast
def test_a_valid_history_is_returned_as_it_is() -> None:
    history = [USER, asks("a", "b"), result("a"), result("b"), {"role": "assistant",
                                                                "content": "done"}]  # fmt: skip
    assert paired(history) is history


@pytest.mark.fast
def test_a_call_without_its_result_gets_an_error_result() -> None:
    fixed = paired([USER, asks("a", "b"), result("b"), USER])
    assert fixed == [USER, asks("a", "b"), result("a", MISSING_RESULT), result("b"), USER]


@pytest.mark.fast
def test_stray_repeated_and_unknown_results_are_dropped() -> None:
    history = [result("x"), USER, asks("a"), result("a", "first"), result("a", "again"),
               result("zzz"), USER, result("a")]  # fmt: skip
    assert paired(history) == [USER, asks("a"), result("a", "first"), USER]


@pytest.mark.fast
def test_results_follow_their_calls_in_order_and_repeated_ids_are_called_once() -> None:
    history = [USER, {**asks("a", "b", "a")}, result("b"), result("a")]
    assert paired(history) == [USER, asks("a", "b"), result("a"), result("b")]


# --- through turns, checked by the strict server ---------------------------------------------


class SlowTools:
    """`get_renewals`, which waits for `release` while `started` is set (a call in flight)."""

    def __init__(self, *, wait: bool = False) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        if not wait:
            self.release.set()
        self.calls = 0

    def tools_for(self, context: AgentContext) -> Toolset:
        return Toolset([ToolSpec("get_renewals", "Renewals.", {"type": "object"})])

    def call(self, context: AgentContext, name: str, arguments: dict[str, Any]) -> ToolResult:
        self.calls += 1
        self.started.set()
        self.release.wait(30)
        return ToolResult(json.dumps({"call": self.calls}))


def _turn(api: Api, content: str, after: int) -> list[dict[str, Any]]:
    api.ok("POST", f"{BASE}/message", 202, json={"content": content})
    return read_stream(api, f"{BASE}/stream", last_event_id=after,
                       params={"untilTurnEnd": "true"})  # fmt: skip


def test_failover_after_a_tool_call_sends_the_other_provider_a_valid_history(
    api: Api, model_server: Any, start_worker: Any
) -> None:
    """The primary calls a tool with an id too long for OpenAI (as another provider's ids
    are), then fails; the secondary gets that call and its result in a form it accepts, and
    so does the next turn."""
    _agent_with_policy(api, policy(model_server.url, "primary", "secondary"))
    foreign = "toolu_" + "7" * 60
    model_server.add(
        {"tool_calls": [{"name": "get_renewals", "id": foreign}]},
        {"status": 500}, {"status": 500},
        {"content": "Two renewals."},
        {"content": "Still two."},
    )  # fmt: skip
    start_worker(tools=SlowTools())
    events = _turn(api, "renewals?", 0)
    assert events[-1]["type"] == "turn.completed"
    assert events[-1]["data"]["provider"] == "secondary/openai:model-secondary"
    _turn(api, "and now?", events[-1]["id"])
    sent = model_server.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool", "assistant",
                                         "user"]  # fmt: skip
    assert sent[2]["tool_calls"][0]["id"] == sent[3]["tool_call_id"] != foreign
    stored = api.ok("GET", f"{BASE}/messages")["items"]
    assert stored[1]["toolCalls"][0]["id"] == foreign  # stored as the provider gave it


def test_a_turn_cancelled_during_a_tool_call_leaves_a_valid_history(
    api: Api, model_server: Any, start_worker: Any
) -> None:
    _agent_with_policy(api, policy(model_server.url, "primary"))
    model_server.add({"tool_calls": [{"name": "get_renewals"}]}, {"content": "after cancel"})
    tools = SlowTools(wait=True)
    start_worker(tools=tools)
    api.ok("POST", f"{BASE}/message", 202, json={"content": "first"})
    assert tools.started.wait(20), "the tool call never started"
    api.ok("POST", f"{BASE}/cancel", 200)
    tools.release.set()
    events = _turn(api, "second", 0)
    assert [e["type"] for e in events if e["type"].startswith("turn.")][-1] == "turn.completed"
    sent = model_server.requests[-1]["messages"]
    # The cancelled turn wrote no messages: its call is not in the history.
    assert [m["role"] for m in sent] == ["system", "user", "user"]


def test_a_history_of_1000_messages_is_accepted(
    api: Api, model_server: Any, start_worker: Any
) -> None:
    _agent_with_policy(api, policy(model_server.url, "primary"))
    calls_per_round, rounds, turns = 10, 7, 13
    round_ = {"tool_calls": [{"name": "get_renewals"}] * calls_per_round}
    for turn in range(turns):
        model_server.add(*[round_] * rounds, {"content": f"answer {turn}"})
    start_worker(tools=SlowTools())
    after = 0
    for turn in range(turns):
        events = _turn(api, f"question {turn}", after)
        assert events[-1]["type"] == "turn.completed", events[-1]
        after = events[-1]["id"]
    _turn(api, "one more", after)
    sent = model_server.requests[-1]["messages"]
    assert len(sent) >= 1000
    assert sum(m["role"] == "tool" for m in sent) == turns * rounds * calls_per_round


def test_the_window_is_turn_by_turn_and_leaves_out_later_turns(db: Any) -> None:
    """Messages queued behind a running turn sit between that turn's messages: the window
    puts each turn's messages together, in turn order, and leaves out the turns after it."""
    import uuid

    from talon.runtime.history_cache import HistoryCache
    from talon.sessions.messages import leased_window_since, window_since

    def turn_window(tx: Any, uid: Any, head: int, turns: int) -> list[dict[str, Any]]:
        """The window of turn `head` as a worker that leases it reads it, without a copy."""
        tx.execute(
            "UPDATE turns SET state = CASE WHEN seq = %s THEN 'running' ELSE 'completed' END, "
            "lease_owner = 'w1' WHERE session_uid = %s",
            (head, uid),
        )
        since = window_since(tx.one(*leased_window_since(uid, "w1", turns, 0)))
        return HistoryCache(max_bytes=0).window(uid, since, 0) or []

    uid = uuid.uuid4()
    turn = {n: uuid.uuid4() for n in (1, 2, 3)}
    # Turn 2's message was posted while turn 1 ran, turn 3's while turn 2 ran.
    messages = [(1, "user", "q1", 1), (2, "user", "q2", 2), (3, "assistant", "a1", 1),
                (4, "user", "q3", 3), (5, "assistant", "a2", 2)]  # fmt: skip
    with db.transaction() as tx:
        tx.execute(  # its message counter, as the writers keep it
            "INSERT INTO sessions (uid, namespace, id, agent, last_message) "
            "VALUES (%s, 'acme', 'w', 'bot', 5)",
            (uid,),
        )
        for seq, input_seq in ((1, 1), (2, 2), (3, 4)):
            tx.execute(
                "INSERT INTO turns (id, session_uid, seq, input_seq) VALUES (%s, %s, %s, %s)",
                (turn[seq], uid, seq, input_seq),
            )
        for seq, role, content, of in messages:
            tx.execute(
                "INSERT INTO messages (session_uid, seq, role, content, turn_id) "
                "VALUES (%s, %s, %s, %s, %s)",
                (uid, seq, role, content, turn[of]),
            )
        window = [m["content"] for m in turn_window(tx, uid, 2, 40)]
        last_only = [m["content"] for m in turn_window(tx, uid, 2, 0)]
        none = turn_window(tx, uid, 0, 40)
    assert window == ["q1", "a1", "q2", "a2"]
    assert last_only == ["q2", "a2"]
    assert none == []


LONG_SESSION_TURNS = 1000


def _rows_read(plan: dict[str, Any], tables: set[str]) -> int:
    """Rows the plan's nodes on `tables` produced or threw away (by filter or join filter)."""
    loops = plan.get("Actual Loops", 1)
    read = 0
    if plan.get("Relation Name") in tables:
        read += (plan["Actual Rows"] + plan.get("Rows Removed by Filter", 0)
                 + plan.get("Rows Removed by Index Recheck", 0)) * loops  # fmt: skip
    read += plan.get("Rows Removed by Join Filter", 0) * loops
    return read + sum(_rows_read(child, tables) for child in plan.get("Plans", []))


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(node for child in plan.get("Plans", []) for node in _nodes(child))]


def _sessions(tx: Any, count: int, turns: int) -> None:
    """`count` sessions of `turns` completed turns each (a user and an assistant message)."""
    tx.execute(
        "INSERT INTO sessions (uid, namespace, id, agent) "
        "SELECT gen_random_uuid(), 'acme', 's' || n, 'bot' FROM generate_series(1, %s) n",
        (count,),
    )
    tx.execute(
        "INSERT INTO turns (id, session_uid, seq, input_seq, state) SELECT gen_random_uuid(), "
        "uid, n, 2 * n - 1, 'completed' FROM sessions, generate_series(1, %s) n",
        (turns,),
    )
    tx.execute(
        "INSERT INTO messages (session_uid, seq, role, content, turn_id) "
        "SELECT t.session_uid, t.input_seq + k, CASE k WHEN 0 THEN 'user' "
        "ELSE 'assistant' END, 'm', t.id FROM turns t, generate_series(0, 1) k"
    )


def _long_session(tx: Any, uid: Any, turns: int) -> None:
    """Session `uid` with `turns` turns, the last one running under worker `w1`'s lease."""
    tx.execute(
        "INSERT INTO sessions (uid, namespace, id, agent, last_message) "
        "VALUES (%s, 'acme', 'long', 'bot', %s)",
        (uid, 2 * turns),
    )
    tx.execute(
        "INSERT INTO turns (id, session_uid, seq, input_seq, state, lease_owner) "
        "SELECT gen_random_uuid(), %s, n, 2 * n - 1, "
        "CASE WHEN n = %s THEN 'running' ELSE 'completed' END, "
        "CASE WHEN n = %s THEN 'w1' END FROM generate_series(1, %s) n",
        (uid, turns, turns, turns),
    )
    tx.execute(
        "INSERT INTO messages (session_uid, seq, role, content, turn_id) "
        "SELECT t.session_uid, t.input_seq + k, CASE k WHEN 0 THEN 'user' "
        "ELSE 'assistant' END, 'm' || t.seq, t.id FROM turns t, generate_series(0, 1) k "
        "WHERE t.session_uid = %s",
        (uid,),
    )


# (short sessions and their turns, the long session's turns, when the statistics were made)
STATISTICS = {
    "made while sessions were one turn long": (300, 1, LONG_SESSION_TURNS, "before"),
    "made while sessions were 20 turns long": (300, 20, LONG_SESSION_TURNS, "before"),
    "fresh, short sessions and a long one": (300, 1, LONG_SESSION_TURNS, "after"),
    "fresh, one session 5,000 turns long": (0, 0, 5000, "after"),
    "never made": (3, 2000, 2000, "never"),
}


@pytest.mark.parametrize("statistics", list(STATISTICS))
def test_a_claims_reads_cost_its_window_not_the_length_of_the_session(
    db: Any, statistics: str
) -> None:
    """Whatever the planner's statistics say of the session's size (short sessions while
    one grew long, fresh, none), a claim's reads (the history window, the knowledge step's
    input) cost the window: turns and messages are taken by their per-session keys, every
    bound given as a value. Joined to the leased turn, the window's range became a join
    filter under a plan made for one-turn sessions, and each claim read the whole session
    (0.26 ms a claim at 300 turns); the forms tried since each read it under some other
    statistics (see `_WINDOW_SQL`). A namespace without knowledge has no query made of the
    input, and asking whether it has chunks reads none of another namespace's."""
    import uuid

    from talon.runtime import context as ctx

    short, short_turns, long_turns, when = STATISTICS[statistics]
    uid = uuid.uuid4()
    with db.transaction() as tx:  # statistics only when the test makes them
        for table in ("sessions", "turns", "messages", "knowledge_chunks"):
            tx.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        tx.execute(
            "INSERT INTO knowledge_chunks (namespace, document, resource_version, idx, heading, "
            "content) SELECT 'other', 'd' || n / 10, 1, n % 10, 'h', 'renewals and invoices' "
            "FROM generate_series(1, 3000) n"
        )
        if short:
            _sessions(tx, short, short_turns)
    if when == "before":
        with db.transaction() as tx:
            tx.execute("ANALYZE sessions, turns, messages, knowledge_chunks")
    with db.transaction() as tx:
        _long_session(tx, uid, long_turns)
    if when == "after":
        with db.transaction() as tx:
            tx.execute("ANALYZE sessions, turns, messages, knowledge_chunks")
    read = {}
    with db.transaction() as tx:
        for name, (sql, params) in (
            ("history", ctx.leased_history(uid, "w1")),
            ("knowledge", ctx.leased_knowledge(uid, "w1")),
        ):
            plan = tx.scalar("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params)[0]["Plan"]
            read[name] = _rows_read(plan, {"turns", "messages", "knowledge_chunks"})
            if name == "knowledge":  # a namespace without knowledge: the input is not parsed
                parsed = [n["Actual Loops"] for n in _nodes(plan)
                          if n["Node Type"] == "Function Scan"]  # fmt: skip
        window = messages_of(tx, uid)
    # The window: HISTORY_TURNS + 1 turns and their two messages each, each message with its
    # turn (by key), each row read at most a few times; the session holds thousands.
    window_turns = ctx.HISTORY_TURNS + 1
    assert window == 2 * window_turns
    assert read["history"] <= 5 * window_turns, read
    assert read["knowledge"] <= 8, read
    assert parsed == [0]  # to_tsvector's lexemes (~1.5 ms for a 10 KB message) never unnested


def messages_of(tx: Any, uid: Any) -> int:
    """How many messages the leased turn's history window holds."""
    from talon.runtime import context as ctx
    from talon.runtime.history_cache import HistoryCache
    from talon.sessions.messages import window_since

    sql, params = ctx.leased_history(uid, "w1")
    window = HistoryCache(max_bytes=0).window(uid, window_since(tx.one(sql, params)), 0)
    return len(window or [])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_workers_copy_of_the_window_gives_what_a_whole_read_gives(db: Any, seed: int) -> None:
    """A claim reads only the messages after its copy's last (`runtime/history_cache.py`):
    over a chat where inputs are queued ahead of the running turn (their messages land
    between a turn's), turns fail without answers and the window slides, each window from
    the copy is the one a whole read gives, and the read returns only the new messages."""
    import random
    import uuid

    from talon.runtime.history_cache import HistoryCache
    from talon.sessions.messages import leased_window_since, window_since

    rng = random.Random(seed)
    uid, copies, turns_back = uuid.uuid4(), HistoryCache(), 3
    state = {"message": 0, "turn": 0}
    queued: list[uuid.UUID] = []
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO sessions (uid, namespace, id, agent) VALUES (%s, 'acme', 'c', 'bot')",
            (uid,),
        )

    def message(tx: Any, turn: uuid.UUID, role: str) -> None:
        state["message"] += 1
        tx.execute(
            "INSERT INTO messages (session_uid, seq, role, content, turn_id) "
            "VALUES (%s, %s, %s, %s, %s)",
            (uid, state["message"], role, f"{role} {state['message']}", turn),
        )
        tx.execute("UPDATE sessions SET last_message = %s WHERE uid = %s", (state["message"], uid))

    def post(tx: Any) -> None:
        state["turn"] += 1
        turn = uuid.uuid4()
        tx.execute(
            "INSERT INTO turns (id, session_uid, seq, input_seq) VALUES (%s, %s, %s, %s)",
            (turn, uid, state["turn"], state["message"] + 1),
        )
        message(tx, turn, "user")
        queued.append(turn)

    fetched = written = 0
    for _ in range(40):
        with db.transaction() as tx:
            for _ in range(rng.choice((0, 1, 1, 2)) if queued else 1):
                post(tx)
            head = queued.pop(0)
            tx.execute("UPDATE turns SET state = 'running', lease_owner = 'w1' WHERE id = %s",
                       (head,))  # fmt: skip
        with db.transaction() as tx:
            after = copies.after(uid)
            row = tx.one(*leased_window_since(uid, "w1", turns_back, after))
            whole = tx.one(*leased_window_since(uid, "w1", turns_back, 0))
        since = window_since(row)
        fetched, written = fetched + len(since.messages), state["message"]
        assert all(seq > after for seq, _, _ in since.messages)
        assert copies.window(uid, since, after) == HistoryCache(0).window(
            uid, window_since(whole), 0
        )
        with db.transaction() as tx:
            failed = rng.random() < 0.2
            for _ in range(0 if failed else rng.choice((1, 3))):
                message(tx, head, "assistant")
            tx.execute("UPDATE turns SET state = %s, lease_owner = NULL WHERE id = %s",
                       ("failed" if failed else "completed", head))  # fmt: skip
    assert fetched == written  # each message read once


@pytest.mark.fast
def test_a_copy_replaced_since_it_was_asked_after_is_not_used() -> None:
    """A window read asking after a copy that has changed since (or was dropped) cannot be
    merged: the claim reads that window whole again."""
    import uuid

    from talon.runtime.history_cache import HistoryCache
    from talon.sessions.messages import WindowSince

    uid, copies = uuid.uuid4(), HistoryCache()
    first = WindowSince(1, 0, 1, 2, [(1, 1, {"content": "q1"}), (2, 1, {"content": "a1"})])
    assert copies.window(uid, first, 0) == [{"content": "q1"}, {"content": "a1"}]
    assert copies.after(uid) == 2
    later = WindowSince(2, 0, 1, 3, [(3, 2, {"content": "q2"})])
    assert copies.window(uid, later, 1) is None  # asked after 1: the copy holds up to 2
    assert copies.after(uid) == 0  # dropped: the next read asks for the whole window
    assert copies.window(uid, first, 0) is not None
    # The session's counter below the copy's last (a database restored to an earlier point):
    # the copy's messages may be gone, their seqs reused.
    restored = WindowSince(1, 0, 1, 1, [])
    assert copies.window(uid, restored, 2) is None


@pytest.mark.fast
def test_a_message_of_no_turn_is_in_no_window() -> None:
    """`messages.turn_id` may be NULL: such a message comes with no turn seq and is left out
    (it was never a turn's), in the window read whole and in the one from the copy."""
    import uuid

    from talon.runtime.history_cache import HistoryCache
    from talon.sessions.messages import WindowSince

    uid, copies = uuid.uuid4(), HistoryCache()
    first = WindowSince(1, 0, 1, 3, [(1, 1, {"content": "q1"}), (2, None, {"content": "x"}),
                                     (3, 1, {"content": "a1"})])  # fmt: skip
    assert copies.window(uid, first, 0) == [{"content": "q1"}, {"content": "a1"}]
    later = WindowSince(2, 0, 1, 4, [(4, 2, {"content": "q2"})])
    assert copies.window(uid, later, 3) == [{"content": "q1"}, {"content": "a1"},
                                            {"content": "q2"}]  # fmt: skip


@pytest.mark.fast
def test_copies_are_dropped_least_recently_used_beyond_the_budget() -> None:
    import uuid

    from talon.runtime.history_cache import HistoryCache
    from talon.sessions.messages import WindowSince

    copies = HistoryCache(max_bytes=5_000)
    sessions = [uuid.uuid4() for _ in range(3)]
    for uid in sessions:
        copies.window(uid, WindowSince(1, 0, 1, 1, [(1, 1, {"content": "x" * 800})]), 0)
    assert copies.sessions() == 3
    copies.after(sessions[0])  # reading its position does not make it recent: using it does
    copies.window(sessions[0], WindowSince(1, 0, 1, 1, []), 1)
    copies.window(uuid.uuid4(), WindowSince(1, 0, 1, 1, [(1, 1, {"content": "y" * 800})]), 0)
    assert copies.sessions() == 3
    assert copies.after(sessions[1]) == 0  # the least recently used, dropped
    assert copies.after(sessions[0]) == 1


def test_a_copy_keeps_its_size_exact_as_messages_leave_its_window() -> None:
    """A copy's size moves by the messages that joined and left it (not measured whole at
    every claim), so a long session's copy stays within the budget it fits."""
    import uuid

    from talon.runtime.history_cache import HistoryCache
    from talon.sessions.messages import WindowSince

    copies = HistoryCache(max_bytes=10_000)
    uid = uuid.uuid4()

    def message(seq: int) -> tuple[int, int, dict[str, Any]]:  # turn `seq`'s one message
        return (seq, seq, {"role": "user", "content": "x" * 1000})

    copies.window(uid, WindowSince(5, 0, 1, 5, [message(s) for s in range(1, 6)]), 0)
    for last in range(6, 40):  # one message joins and the oldest leaves, claim after claim
        lo = last - 4
        since = WindowSince(last, lo - 1, lo, last, [message(last)])
        window = copies.window(uid, since, last - 1)
        assert window is not None and len(window) == 5
        assert copies.after(uid) == last  # still kept: ~8.5 kB of a 10 kB budget
