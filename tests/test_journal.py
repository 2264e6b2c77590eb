"""Resuming turns from the step journal, and fencing out a worker that lost its lease."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import samples
from conftest import Api, tenancy_for_tests, worker_for_tests
from talon.broker.base import Delivery
from talon.runtime.tools.base import AgentContext, ToolResult
from talon.runtime.turns import INTERRUPTED, RunnerSettings, TurnRunner
from talon.store.database import Database
from talon.store.liveness import OwnerLock
from test_models import RecordingTools, _agent_with_policy, policy

BASE = "/v1/ns/acme/agents/bot/sessions/s1"


class Crash(BaseException):
    """Stands in for the process dying: nothing after it runs."""


class CrashOnFirstCall(RecordingTools):
    def call(self, context: AgentContext, name: str, arguments: dict[str, Any]) -> ToolResult:
        self.calls.append((name, arguments))
        if len(self.calls) == 1:
            raise Crash()
        return ToolResult("second call")


def session_uid(db: Database) -> uuid.UUID:
    with db.transaction() as tx:
        return tx.scalar("SELECT uid FROM sessions WHERE id = 's1'")


def expire_leases(db: Database) -> None:
    with db.transaction() as tx:
        tx.execute("UPDATE turns SET lease_expires_at = now() - interval '1 second' "
                   "WHERE state = 'running'")  # fmt: skip


_locks: dict[str, tuple[Database, OwnerLock]] = {}


def runner(db: Database, tools: Any, name: str) -> TurnRunner:
    """A runner as worker `name`, alive (holding its liveness lock, as a Worker does, until
    the test's pool closes): its leases hold until they expire."""
    held = _locks.get(name)
    if held is None or held[0] is not db:
        held = _locks[name] = (db, OwnerLock(db.raw_connect, name, closed=lambda: db.closed))
    assert held[1].wait_held(10)
    return TurnRunner(db, tools, RunnerSettings(name, lease_seconds=30), tenancy_for_tests())


def test_resume_after_a_crash_during_a_tool_call(api: Api, db: Database, model_server) -> None:
    _agent_with_policy(api, policy(model_server.url, "primary"))
    model_server.add(
        {"tool_calls": [{"name": "get_renewals", "arguments": {"days": 14}}]},
        {"content": "I could not read the renewals; will retry later."},
    )
    api.ok("POST", f"{BASE}/message", 202, json={"content": "Review renewals."})
    tools = CrashOnFirstCall()
    uid = session_uid(db)
    try:
        runner(db, tools, "worker-a").drive(uid)
        raise AssertionError("the tool call should have crashed the worker")
    except Crash:
        pass
    # The dead worker's lease runs out; another worker picks the turn up.
    expire_leases(db)
    assert runner(db, tools, "worker-b").drive(uid) is None

    assert tools.calls == [("get_renewals", {"days": 14})]  # never executed twice
    assert len(model_server.requests) == 2  # the first model answer was not requested again
    messages = api.ok("GET", f"{BASE}/messages")["items"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[2]["content"] == INTERRUPTED
    assert messages[2]["toolCallId"] == messages[1]["toolCalls"][0]["id"]
    # The model saw a valid history: the call answered by an error result.
    resent = model_server.requests[1]["messages"]
    assert [m["role"] for m in resent] == ["system", "user", "assistant", "tool"]
    turn = api.ok("GET", f"{BASE}/turns/{messages[0]['turnId']}")
    assert turn["state"] == "completed" and turn["attempts"] == 2
    started = [e for e in _events(api) if e["type"] == "turn.started"]
    assert [e["data"]["resumed"] for e in started] == [False, True]


class ScopedTools(RecordingTools):
    """Records its turn scope (`turn()`) around the calls, as MCP sessions are held."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[str] = []

    @contextmanager
    def turn(self) -> Iterator[None]:
        self.log.append("open")
        try:
            yield
        finally:
            self.log.append("close")

    def call(self, context: AgentContext, name: str, arguments: dict[str, Any]) -> ToolResult:
        self.log.append("call")
        return super().call(context, name, arguments)


def test_a_turns_tool_calls_run_inside_one_turn_scope(api: Api, db: Database, model_server) -> None:
    """The runner holds a source's turn scope around each turn's steps (MCP sessions live
    in it), a scope per turn, ended by the turn."""
    _agent_with_policy(api, policy(model_server.url, "primary"))
    model_server.add(
        {"tool_calls": [{"name": "get_renewals", "arguments": {"days": 14}},
                        {"name": "get_renewals", "arguments": {"days": 30}}]},
        {"content": "Two renewals."},
        {"content": "Nothing to call."},
    )  # fmt: skip
    api.ok("POST", f"{BASE}/message", 202, json={"content": "Review renewals."})
    api.ok("POST", f"{BASE}/message", 202, json={"content": "Thanks."})
    tools = ScopedTools()
    assert runner(db, tools, "worker-a").drive(session_uid(db)) is None
    assert tools.log == ["open", "call", "call", "close", "open", "close"]


class BlockingTools(RecordingTools):
    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def call(self, context: AgentContext, name: str, arguments: dict[str, Any]) -> ToolResult:
        self.calls.append((name, arguments))
        if len(self.calls) == 1:
            self.entered.set()
            self.release.wait(30)
            return ToolResult("late result from the stale worker")
        return ToolResult("fresh")


def worker_a_in_a_tool_call(
    api: Api, db: Database, model_server: Any, answer: str
) -> tuple[BlockingTools, uuid.UUID, threading.Thread]:
    """worker-a runs a turn and blocks inside its tool call (until `tools.release`); the
    model then answers `answer`."""
    _agent_with_policy(api, policy(model_server.url, "primary"))
    model_server.add(
        {"tool_calls": [{"name": "get_renewals", "arguments": {"days": 7}}]},
        {"content": answer},
    )
    api.ok("POST", f"{BASE}/message", 202, json={"content": "Review renewals."})
    tools = BlockingTools()
    uid = session_uid(db)
    thread = threading.Thread(target=lambda: runner(db, tools, "worker-a").drive(uid))
    thread.start()
    assert tools.entered.wait(20)
    return tools, uid, thread


def test_a_worker_that_lost_its_lease_writes_nothing(api: Api, db: Database, model_server) -> None:
    tools, uid, stale = worker_a_in_a_tool_call(api, db, model_server, "done by worker b")
    expire_leases(db)  # worker-a is presumed dead while it is only slow
    runner(db, tools, "worker-b").drive(uid)
    tools.release.set()
    stale.join(timeout=20)

    messages = api.ok("GET", f"{BASE}/messages")["items"]
    assert [m["content"] for m in messages if m["role"] == "assistant" and m["content"]] == [
        "done by worker b"
    ]
    assert [m["content"] for m in messages if m["role"] == "tool"] == [INTERRUPTED]
    events = _events(api)
    assert sum(e["type"] == "turn.completed" for e in events) == 1
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))


def test_a_worker_that_lost_its_lease_during_its_last_model_call_writes_nothing(
    api: Api, db: Database, model_server, monkeypatch
) -> None:
    """The final write (the session's lock, the delivery's acknowledgement, then the answer's
    model step with its usage, the messages and the turn's completion in one statement)
    travels in one round trip with the COMMIT: a worker whose lease was taken over while
    the model answered must still write nothing, every write of that round trip guarded by
    the fencing token, and acknowledge nothing."""
    import talon.runtime.deltas
    from talon.broker.outbox import DISPATCH_TOPIC
    from talon.broker.postgres import PostgresBroker

    # No streamed-delta flush (which renews, and would find the lease lost first): the
    # final write is the first to learn of it.
    monkeypatch.setattr(talon.runtime.deltas, "DELTA_FLUSH_SECONDS", 3600.0)
    _agent_with_policy(api, policy(model_server.url, "primary"))
    model_server.add({"content": "from a", "hang": 2}, {"content": "from b"})
    api.ok("POST", f"{BASE}/message", 202, json={"content": "Hello."})
    uid = session_uid(db)
    outcome: list[Any] = []
    (delivery,), _ = PostgresBroker(db).claim((DISPATCH_TOPIC,))  # the message's
    assert delivery.ack_in is not None
    acks = []

    def run_a() -> None:
        assert delivery.ack_in is not None

        def on_idle(tx: Any, when: Any) -> None:
            acks.append(delivery.ack_in(tx, when))

        try:
            outcome.append(runner(db, RecordingTools(), "worker-a").drive(uid, on_idle=on_idle))
        except Exception as exc:  # e.g. the completion colliding with worker-b's rows
            outcome.append(exc)

    stale = threading.Thread(target=run_a)
    stale.start()
    deadline = time.monotonic() + 20
    while not model_server.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert model_server.requests  # worker-a waits for its answer
    expire_leases(db)  # worker-a is presumed dead while it is only slow
    assert runner(db, RecordingTools(), "worker-b").drive(uid) is None
    stale.join(timeout=20)
    assert outcome == [None]  # fenced: stopped quietly, nothing written

    messages = api.ok("GET", f"{BASE}/messages")["items"]
    assert [m["content"] for m in messages if m["role"] == "assistant"] == ["from b"]
    events = _events(api)
    completed = [e for e in events if e["type"] == "turn.completed"]
    assert len(completed) == 1 and [e["id"] for e in events] == list(range(1, len(events) + 1))
    with db.transaction() as tx:
        turn = tx.one("SELECT state, attempts, lease_owner FROM turns")
        usage = tx.scalar("SELECT count(*) FROM model_usage")
        answers = tx.all(
            "SELECT output->>'content' AS content, fencing_token FROM turn_steps "
            "WHERE kind = 'model'"
        )
    assert turn == {"state": "completed", "attempts": 2, "lease_owner": None}
    assert usage == 1  # worker-b's model step only
    assert answers == [{"content": "from b", "fencing_token": 2}]
    assert len(acks) == 1 and not acks[0]()  # worker-a tried, and acknowledged nothing
    with db.transaction() as tx:
        assert tx.scalar("SELECT count(*) FROM outbox WHERE id = %s", (int(delivery.id),)) == 1


def test_a_turn_under_a_live_lease_is_left_to_its_worker(
    api: Api, db: Database, model_server
) -> None:
    tools, uid, owner = worker_a_in_a_tool_call(api, db, model_server, "done by worker a")
    busy_until = runner(db, tools, "worker-b").drive(uid)  # a duplicate delivery meanwhile
    tools.release.set()
    owner.join(timeout=20)

    # worker-b touched nothing and said when to look again: when worker-a's lease runs out.
    assert busy_until is not None and busy_until.owner == "worker-a"
    assert 20 < (busy_until.until - datetime.now(UTC)).total_seconds() <= 30
    assert tools.calls == [("get_renewals", {"days": 7})]
    turn = api.ok("GET", f"{BASE}/turns/{api.ok('GET', f'{BASE}/messages')['items'][0]['turnId']}")
    assert turn["state"] == "completed" and turn["attempts"] == 1
    assert [e["type"] for e in _events(api)].count("turn.started") == 1


def test_a_turn_whose_agent_is_gone_fails_cleanly(api: Api, db: Database) -> None:
    items = [samples.namespace("acme"), samples.template("acme"), samples.agent("acme")]
    api.ok("POST", "/v1/apply", json={"items": items})
    api.ok("POST", "/v1/ns/acme/agents/bot/sessions", 201, json={"id": "s1"})
    api.ok("POST", f"{BASE}/message", 202, json={"content": "first"})
    api.ok("POST", f"{BASE}/message", 202, json={"content": "second"})
    with db.transaction() as tx:  # the API refuses (the agent has sessions): a raw race
        tx.execute("DELETE FROM resources WHERE kind = 'Agent' AND name = 'bot'")
    assert runner(db, RecordingTools(), "worker-a").drive(session_uid(db)) is None
    ends = [e for e in _events(api) if e["type"] in ("turn.completed", "turn.failed")]
    assert [(e["type"], e["data"]["code"], e["data"]["openTurns"]) for e in ends] == [
        ("turn.failed", "agent_not_found", 1),
        ("turn.failed", "agent_not_found", 0),
    ]


def test_duplicate_deliveries_yield_one_turn(api: Api, db: Database) -> None:
    items = [samples.namespace("acme"), samples.template("acme"), samples.agent("acme")]
    api.ok("POST", "/v1/apply", json={"items": items})
    api.ok("POST", "/v1/ns/acme/agents/bot/sessions", 201, json={"id": "s1"})
    accepted = api.ok("POST", f"{BASE}/message", 202, json={"content": "once"})
    worker = worker_for_tests(db)
    payload = {"sessionUid": str(session_uid(db)), "turnId": accepted["turnId"]}
    results = [worker.handle(Delivery(str(i), "dispatch", payload, 1)) for i in range(3)]
    assert [r.outcome for r in results] == ["ack"] * 3
    messages = api.ok("GET", f"{BASE}/messages")["items"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert sum(e["type"] == "turn.completed" for e in _events(api)) == 1


def _events(api: Api) -> list[dict[str, Any]]:
    from conftest import read_stream

    return read_stream(api, f"{BASE}/stream", last_event_id=0, params={"untilTurnEnd": "true"})


class CachingTools(RecordingTools):
    def __init__(self) -> None:
        super().__init__()
        self.invalidated: list[tuple[str, str, str]] = []

    def invalidate(self, namespace: str, kind: str, name: str) -> None:
        self.invalidated.append((namespace, kind, name))


def test_lifecycle_events_reach_the_worker(api: Api, db: Database, start_worker) -> None:
    items = [samples.namespace("acme"), samples.mcp_server("acme"),
             samples.template("acme", servers=["tools"]), samples.agent("acme")]  # fmt: skip
    api.ok("POST", "/v1/apply", json={"items": items})
    with db.transaction() as tx:
        assert tx.scalar("SELECT count(*) FROM outbox WHERE topic = 'lifecycle'") == 0
    api.ok("PATCH", "/v1/ns/acme/agent-templates/support",
           json={"definition": {"systemPrompt": "v2"}})  # fmt: skip
    api.ok("PATCH", "/v1/ns/acme/mcp-servers/tools", json={"spec": {"timeoutSeconds": 3}})
    with db.transaction() as tx:
        rows = tx.all("SELECT payload FROM outbox WHERE topic = 'lifecycle' ORDER BY id")
    assert [(r["payload"]["kind"], r["payload"]["name"]) for r in rows] == [
        ("AgentTemplate", "support"), ("MCPServer", "tools")
    ]  # fmt: skip
    tools = CachingTools()
    start_worker(tools=tools)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # settled deliveries leave the queue
        with db.transaction() as tx:
            if tx.scalar("SELECT count(*) FROM outbox") == 0:
                break
        time.sleep(0.05)
    assert sorted(tools.invalidated) == [("acme", "AgentTemplate", "support"),
                                         ("acme", "MCPServer", "tools")]  # fmt: skip


def test_a_turn_costs_the_same_statements_and_transactions(
    api: Api, db: Database, model_server, monkeypatch
) -> None:
    """What one turn with a tool call costs the worker: the journal's combined statements
    (renewal with step, final step with messages and completion) and the writes deferred to
    travel with the next statement or the COMMIT keep it at these counts. A change here is a
    change in every turn's cost, measured in Benchmarks."""
    import talon.runtime.deltas
    from talon.store import statements
    from talon.store.database import Tx

    _agent_with_policy(api, policy(model_server.url, "primary"))
    model_server.add(
        {"tool_calls": [{"name": "get_renewals", "arguments": {"days": 7}}]},
        {"content": "two accounts renew"},
    )
    api.ok("POST", f"{BASE}/message", 202, json={"content": "Review renewals."})
    uid = session_uid(db)
    # No streamed-delta flush mid-call on a slow machine: only the turn's own writes count.
    monkeypatch.setattr(talon.runtime.deltas, "DELTA_FLUSH_SECONDS", 3600.0)
    # Per transaction: the statements it ran and its round trips to the server.
    ran: list[list[str]] = []
    trips: list[int] = []
    begin, run_batch, commit = Tx.__init__, statements.run_batch, statements.commit

    def beginning(self: Tx, connection: Any) -> None:
        ran.append([])
        trips.append(0)
        begin(self, connection)

    def batch(connection: Any, work: Any, *, commit: bool = False) -> Any:
        ran[-1] += [sql for sql, _ in work]
        trips[-1] += 1
        return run_batch(connection, work, commit=commit)

    def committing(connection: Any) -> None:
        trips[-1] += 1
        commit(connection)

    monkeypatch.setattr(Tx, "__init__", beginning)
    monkeypatch.setattr(statements, "run_batch", batch)
    monkeypatch.setattr(statements, "commit", committing)
    assert runner(db, RecordingTools(), "worker-a").drive(uid) is None
    monkeypatch.undo()
    # The claim with the turn's start (the knowledge step and its events) in one statement,
    # its reads, committed in one round trip; the model's tool call with the tool step's
    # start; the call marked as running; its result; the answer: the session's lock, then
    # its model step, the three messages, the final step, the turn's completion and its
    # events in one statement, committed in the same round trip.
    assert [len(statements_) for statements_ in ran] == [3, 3, 2, 2, 2]
    assert trips == [1, 2, 2, 2, 1]
    assert sum("turn_steps" in sql for sqls in ran for sql in sqls) == 6
    assert "FOR UPDATE" in ran[-1][0] and "turn_steps" not in ran[-1][0]


# Tables that grow with every turn: a statement of the turn path that scans one whole costs
# more with every turn the database has served.
_GROWING = ("turns", "messages", "session_events", "turn_steps", "model_usage", "outbox")


def test_no_statement_of_a_turn_scans_a_growing_table_in_its_generic_plan(
    api: Api, db: Database, database_url: str, model_server, monkeypatch
) -> None:
    """Each prepared statement runs on a generic plan after its fifth run, planned once per
    connection with whatever statistics there were then (a young database has none): such a
    plan must still find its rows by index, and by the whole key. The Idempotency-Key's
    lookup once joined its session by a filter, and its generic plan scanned every turn of
    the database; a claim's agent row was looked up by kind alone, and a turn's view by its
    session (every turn the session had), before they named their whole key."""
    from pg8000.dbapi import convert_paramstyle

    from conftest import raw_connection, read_stream
    from talon.store import statements

    _agent_with_policy(api, policy(model_server.url, "primary"))
    model_server.add(
        {"tool_calls": [{"name": "get_renewals", "arguments": {"days": 7}}]},
        {"content": "two accounts renew"},
    )
    sent: dict[str, int] = {}
    run_batch = statements.run_batch

    def noting(connection: Any, work: Any, *, commit: bool = False) -> Any:
        for sql, params in work:
            sent[sql] = len(params)
        return run_batch(connection, work, commit=commit)

    monkeypatch.setattr(statements, "run_batch", noting)
    for status in (202, 200):  # the retry finds its turn
        api.ok("POST", f"{BASE}/message", status, json={"content": "Review renewals."},
               headers={"Idempotency-Key": "k-1"})  # fmt: skip
    assert runner(db, RecordingTools(), "worker-a").drive(session_uid(db)) is None
    # What reads a session back: its view, pages, a turn, a replayed stream, the usage.
    sessions, agent = BASE.rsplit("/", 1)[0], BASE.rsplit("/", 2)[0]
    with db.transaction() as tx:
        turn = tx.scalar("SELECT id FROM turns")
    api.ok("GET", BASE)
    api.ok("GET", f"{BASE}/messages", params={"after": 1, "limit": 2})
    api.ok("GET", sessions, params={"limit": 1})
    api.ok("GET", f"{BASE}/turns/{turn}")
    read_stream(api, f"{BASE}/stream", last_event_id=1, params={"untilTurnEnd": "true"})
    for usage in ("/v1/ns/acme/usage", f"{agent}/usage", f"{BASE}/usage"):
        api.ok("GET", usage)
    monkeypatch.undo()
    explain = raw_connection(database_url)
    explain.autocommit = True
    cursor = explain.cursor()
    cursor.execute("SELECT indexname, tablename FROM pg_indexes WHERE schemaname = 'public'")
    tables = dict(cursor.fetchall())
    cursor.execute("SET plan_cache_mode = force_generic_plan")
    scans: dict[str, list[str]] = {}
    for sql, count in sent.items():
        if sql.split(None, 1)[0].upper() not in ("SELECT", "WITH", "INSERT", "UPDATE", "DELETE"):
            continue  # SET and the like: no plan
        statement, _ = convert_paramstyle("format", sql, (None,) * count)
        cursor.execute(f"PREPARE turn_path AS {statement}")
        arguments = ", ".join(["NULL"] * count)
        cursor.execute(f"EXPLAIN EXECUTE turn_path{f'({arguments})' if count else ''}")
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("DEALLOCATE turn_path")
        found = [t for t in _GROWING if f"Seq Scan on {t} " in plan]
        exempt = tuple(t for fallback, t in _LEGACY_FALLBACKS.items() if fallback in sql)
        found += _unbounded_index_scans(plan, tables, exempt)
        if found:
            scans[" ".join(sql.split())[:120]] = found
    explain.close()
    assert len(sent) > 25, len(sent)  # the turn's statements and the reads were seen
    assert scans == {}


# The replayed turn's first event for a turn queued before migration 0017 recorded it: read
# only for those turns (a COALESCE's fallback), from the session's events.
_LEGACY_FALLBACKS = {"(SELECT min(e.id) - 1 FROM session_events e": "session_events"}


def _unbounded_index_scans(plan: str, tables: dict[str, str], exempt: tuple[str, ...]) -> list[str]:
    """The index scans in `plan` that read more than their key's rows as tables grow: on
    `resources` without the namespace (every tenant's rows of a kind), and on a growing table
    by the session alone (every row the session ever had), except through the index of its
    open turns, or under a LIMIT with no filter (the newest rows, in the index's order); none
    on the `exempt` tables."""
    found = []
    lines = plan.splitlines()

    def depth(line: str) -> int:
        return len(line) - len(line.lstrip())

    for at, line in enumerate(lines):
        scan = re.search(r"Index (?:Only )?Scan (?:Backward )?(?:using|on) (\S+)", line)
        if scan is None:
            continue
        here = depth(line)
        # Its own detail lines, up to the next line as shallow as itself (a sibling, or its
        # parent's next part); its parent, the nearest shallower line above it.
        details = []
        for below in lines[at + 1 :]:
            if depth(below) <= here:
                break
            details.append(below.strip())
        parent = next((above for above in reversed(lines[:at]) if depth(above) < here), "")
        filtered = any(detail.startswith("Filter:") for detail in details)
        if "Limit" in parent and not filtered:
            continue
        index = scan.group(1)
        condition = next((d.split(":", 1)[1].strip() for d in details
                          if d.startswith("Index Cond:")), "")  # fmt: skip
        table = tables.get(index, "")
        if table in exempt:
            continue
        if table == "resources" and "namespace" not in condition:
            found.append(f"{index}: {condition}")
        if (table in _GROWING and index != "turns_open"
                and re.fullmatch(r"\(session_uid = [^()]+\)", condition)):  # fmt: skip
            found.append(f"{index}: {condition}")
    return found


def test_the_scan_rule_tells_a_bounded_scan_from_an_unbounded_one() -> None:
    """What the generic-plan test flags, on plans in EXPLAIN's own text."""
    tables = {"turns_session_uid_seq_key": "turns", "resources_pkey": "resources",
              "turns_open": "turns"}  # fmt: skip
    by_session = "  ->  Index Scan {}using turns_session_uid_seq_key on turns  (cost=0.14..8.16)\n"
    session_cond = "        Index Cond: (session_uid = $1)\n"
    newest = "Limit  (cost=0.14..8.16 rows=1)\n" + by_session.format("Backward ") + session_cond
    filtered = newest + "        Filter: (id = $2)\n"
    in_a_cte = "Limit\n  CTE h\n" + "  " + by_session.format("") + "  " + session_cond
    all_agents = ("Nested Loop\n  ->  Index Scan using resources_pkey on resources r\n"
                  "        Index Cond: (kind = 'Agent'::text)\n")  # fmt: skip
    open_turns = "Limit\n  ->  Index Scan using turns_open on turns\n" + session_cond

    assert _unbounded_index_scans(newest, tables, ()) == []
    assert _unbounded_index_scans(open_turns, tables, ()) == []
    assert _unbounded_index_scans(filtered, tables, ()) == [
        "turns_session_uid_seq_key: (session_uid = $1)"
    ]
    assert _unbounded_index_scans(in_a_cte, tables, ()) == [
        "turns_session_uid_seq_key: (session_uid = $1)"
    ]
    assert _unbounded_index_scans(all_agents, tables, ()) == [
        "resources_pkey: (kind = 'Agent'::text)"
    ]
    assert _unbounded_index_scans(all_agents, tables, ("resources",)) == []
