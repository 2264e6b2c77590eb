"""The structure stays one-way and says who owns what: no import circles between Talon's
modules (lazy imports inside functions included, since they are circles all the same when
they run), no import from a lower layer up to a higher one, one writer per table (with the
README's listed exceptions), and no module over 400 lines."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.fast

PACKAGE = ROOT / "shared" / "talon"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(("talon", *parts)).removesuffix(".__init__")


def _import_graph() -> dict[str, set[str]]:
    imports: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("talon"):
                found.add(node.module)
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("talon")}
        imports[_module_name(path)] = found
    return {
        name: {m for m in found if m in imports and m != name} for name, found in imports.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_through_others() -> None:
    graph = _import_graph()
    assert "talon.api.app" in graph and graph["talon.api.http"] == set()
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


# Packages that a package may never import: the store at the bottom, the sessions layer below
# the runtime (which appends session events), the HTTP adapter on top (only the entry points
# build it).
_NEVER = {
    "store": {"sessions", "runtime", "scheduling", "broker", "api", "ops", "cli", "services"},
    "sessions": {"runtime", "scheduling", "api", "ops", "cli", "services"},
    "scheduling": {"runtime", "api", "ops", "cli"},
    "runtime": {"api", "ops", "cli"},
    "ops": {"api", "runtime", "cli"},
    # Traces are a leaf every layer may use: it imports no other part of Talon but its errors.
    "telemetry": {
        "store",
        "sessions",
        "scheduling",
        "runtime",
        "broker",
        "api",
        "ops",
        "cli",
        "services",
        "resources",
        "auth",
        "tenancy",
        "knowledge",
        "client",
    },
}


def _package(module: str) -> str:
    """`talon.sessions.events` -> `sessions`; `talon` itself -> ``."""
    return module.split(".")[1] if "." in module else ""


def test_lower_layers_never_import_higher_ones() -> None:
    wrong = sorted(
        f"{module} imports {imported}"
        for module, imports in _import_graph().items()
        for imported in imports
        if module.count(".") > 1 and _package(imported) in _NEVER.get(_package(module), set())
    )
    assert wrong == []
    api_users = {
        module for module, imports in _import_graph().items()
        if _package(module) != "api" and any(_package(i) == "api" for i in imports)
    }  # fmt: skip
    # The wiring, and the server adapter that answers for the gateway before a request
    # reaches it (talon.serve: the same Connection: close marker the gateway uses).
    assert api_users == {"talon.entrypoints", "talon.serve.worker"}


# Tables written by more than one module, on purpose (README, Who writes which table): one
# statement writing several tables in one round trip (turn_queue.py queues a message with its
# turn, events and outbox row; the journal's last step completes the turn), the session's
# counters moved by whoever numbers its rows, and the tables that are protocols between
# processes (turns: queued and cancelled by the gateway, run by the worker; outbox: written
# with the change, consumed by the broker driver). Every other table has one writer.
_SHARED_WRITES = {
    "sessions": {"sessions/service.py", "sessions/events.py", "sessions/messages.py",
                 "sessions/turn_queue.py"},
    "messages": {"sessions/messages.py", "sessions/turn_queue.py"},
    "session_events": {"sessions/events.py", "sessions/turn_queue.py"},
    "turns": {"sessions/turn_queue.py", "sessions/posting.py", "runtime/claim.py",
              "store/turn_steps.py"},
    "outbox": {"broker/outbox.py", "broker/postgres.py", "broker/relay.py",
               "sessions/turn_queue.py"},
}  # fmt: skip
_WRITE = re.compile(r"\b(?:INSERT INTO|UPDATE|DELETE FROM) (\w+)")  # SQL is written in capitals


def _tables() -> set[str]:
    migrations = PACKAGE / "store" / "migrations"
    return {
        name
        for path in migrations.glob("*.sql")
        for name in re.findall(r"CREATE TABLE (\w+)", path.read_text())
    }


def test_each_table_is_written_by_its_owner_alone() -> None:
    tables = _tables()
    writers: dict[str, set[str]] = {table: set() for table in tables}
    for path in PACKAGE.rglob("*.py"):
        for table in _WRITE.findall(path.read_text()):
            if table in tables:
                writers[table].add(str(path.relative_to(PACKAGE)))
    for table, modules in sorted(writers.items()):
        if table in _SHARED_WRITES:
            assert modules == _SHARED_WRITES[table], table
        else:
            assert len(modules) == 1, (table, sorted(modules))


def test_only_the_journal_names_turn_steps() -> None:
    """The step journal's table: its statements are in store/turn_steps.py, which the journal
    writes through and the session views read through."""
    naming = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if re.search(r"\b(FROM|INTO|UPDATE|JOIN) turn_steps\b", path.read_text())
    }
    assert naming == {"store/turn_steps.py"}


def test_no_module_is_over_400_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): lines
        for path in [*PACKAGE.rglob("*.py"), *(ROOT / "functions").rglob("*.py")]
        if (lines := len(path.read_text().splitlines())) > 400
    }
    assert long == {}
