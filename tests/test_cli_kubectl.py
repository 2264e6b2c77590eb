"""kubectl conventions of the `talon` CLI against a live gateway: `describe`, `-o
wide|name|jsonpath=`, `-A`, `delete -f`, `get turns` and `get --watch` (in a subprocess, ended
with SIGINT as Ctrl-C would)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_cli
import yaml

from conftest import ADMIN_TOKEN, ROOT
from talon.client import Client

MANIFESTS = test_cli.MANIFESTS
one_error_line = test_cli.one_error_line
cli = test_cli.cli  # the fixture: `talon` in this process, against the test's gateway


def second_namespace(folder: Path, name: str = "globex") -> Path:
    """The example manifests again, in another namespace."""
    documents = []
    for file in sorted((ROOT / "manifests").glob("*.yaml")):
        for doc in yaml.safe_load_all(file.read_text()):
            if doc is None:
                continue
            if doc["kind"] == "Namespace":
                doc["metadata"]["name"] = name
            else:
                doc["metadata"]["namespace"] = name
            if doc["kind"] == "MCPServer":  # the example secrets are granted to acme only
                doc["spec"].pop("headers", None)
            documents.append(doc)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump_all(documents))
    return folder


def test_describe_an_agent_a_session_and_a_schedule(
    cli, start_worker, gateway_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cli("apply", "-f", MANIFESTS)
    code, out, _ = cli("describe", "agent", "customer-support", "-n", "acme")
    assert code == 0, out
    assert "Name:           customer-support" in out and "Phase:          Resolved" in out
    assert "Template:       customer-support" in out
    assert 'Features:       customer_id="cus_acme_001"' in out
    bindings = out[out.index("Bindings:") : out.index("Tools:")]
    assert "customer-support-stripe    stripe-readonly    get_*,list_*,search_*" in bindings
    assert "customer-support-hubspot   hubspot-readonly   *" in bindings
    # The effective tools by name (GET .../agents/{agent}/tools): no example servers run here.
    tools = out[out.index("Tools:") : out.index("Tool servers:")]
    assert re.search(r"talon\.current_time +builtin", tools)
    assert re.search(r"skill\.renewal-outreach +skill renewal-outreach", tools)
    servers = out[out.index("Tool servers:") :]
    assert re.search(r"stripe-readonly +unavailable +0 +- +", servers)
    assert "http://127.0.0.1:8091/mcp" in out  # the server's URL under MCP servers

    start_worker(demo_fallback=True)
    code, out, _ = cli("send", "customer-support", "s1", "Hello.", "-n", "acme")
    assert code == 0
    code, out, _ = cli("describe", "session", "s1", "-n", "acme", "--agent", "customer-support")
    assert code == 0
    assert "Open turns (0 queued):\n  <none>" in out
    events = out[out.index("Recent events:") :]
    assert "turn.completed" in events and "step.completed" in events
    assert "Latest turn's steps:" in out and "write-next-message" in out

    with Client(gateway_url, ADMIN_TOKEN) as sdk:
        sdk.run_schedule("acme", "renewal-check")
    code, out, _ = cli("describe", "schedule", "renewal-check", "-n", "acme")
    assert code == 0
    assert "Schedule:       0 14 * * 1-5" in out and "Timezone:       America/Los_Angeles" in out
    assert "Next fire:      20" in out  # an ISO timestamp
    fires = out[out.index("Last fires:") :].splitlines()
    assert fires[1].split() == ["FIRE", "AT", "REASON", "OUTCOME", "TURN", "ERROR"]
    assert fires[2].split()[1] == "run"

    code, out, _ = cli("describe", "mcp-server", "stripe-readonly", "-n", "acme")
    assert code == 0 and "Spec:" in out and "timeoutSeconds: 20" in out
    code, _, err = cli("describe", "agent", "nobody", "-n", "acme")
    assert code == 1 and "HTTP 404" in one_error_line(err)
    code, out, _ = cli("describe", "namespace", "acme")
    assert code == 0 and out.startswith("Name:           acme\nKind:           Namespace")
    code, _, err = cli("describe", "session", "s1", "-n", "acme")
    assert code == 1 and "--agent AGENT" in one_error_line(err)


def test_output_formats_and_all_namespaces(cli, tmp_path: Path) -> None:
    cli("apply", "-f", MANIFESTS)
    code, out, err = cli("apply", "-f", str(second_namespace(tmp_path)))
    assert code == 0, err
    code, out, _ = cli("get", "agents", "-A")
    assert code == 0
    rows = [line.split() for line in out.strip().splitlines()]
    assert rows[0] == ["NAMESPACE", "NAME", "TEMPLATE", "PHASE", "AGE"]
    assert sorted(r[:2] for r in rows[1:]) == [
        ["acme", "customer-support"], ["globex", "customer-support"]
    ]  # fmt: skip
    code, out, _ = cli("get", "agents", "-n", "acme", "-o", "wide")
    header = out.splitlines()[0].split()
    assert header[-4:] == ["SERVERS", "SKILLS", "LABELS", "AGE"]
    assert "stripe-readonly,hubspot-readonly" in out and "app=customer-support" in out
    code, out, _ = cli("get", "mcp-servers", "-A", "-o", "name")
    assert out.splitlines() == ["mcpserver/hubspot-readonly", "mcpserver/stripe-readonly"] * 2
    code, out, _ = cli("get", "agents", "-A", "-o", "jsonpath={.items[*].metadata.namespace}")
    assert sorted(out.split()) == ["acme", "globex"]
    code, out, _ = cli("get", "agent", "customer-support", "-n", "globex", "-o",
                       r"jsonpath={.metadata.name}{'\n'}{.status.effective.skills[0]}")  # fmt: skip
    assert out.split() == ["customer-support", "renewal-outreach"]
    enabled = "jsonpath={.items[?(@.spec.enabled==true)].metadata.name}"
    code, out, _ = cli("get", "schedules", "-n", "acme", "-o", enabled)
    assert out.strip() == "renewal-check"
    code, out, _ = cli("get", "agents", "-A", "-o", "json")
    assert {i["metadata"]["namespace"] for i in json.loads(out)["items"]} == {"acme", "globex"}
    code, _, err = cli("get", "agents", "-n", "acme", "-o", "jsonpath={.items[}")
    assert code == 1 and "jsonpath" in one_error_line(err)
    with pytest.raises(SystemExit) as exited:
        cli("get", "agents", "-o", "table")
    assert exited.value.code == 2


def test_delete_what_files_define(cli, tmp_path: Path) -> None:
    folder = second_namespace(tmp_path)
    # The namespace last in the file: delete -f still deletes it last.
    documents = list(yaml.safe_load_all((folder / "globex.yaml").read_text()))
    (folder / "globex.yaml").write_text(yaml.safe_dump_all([*documents[1:], documents[0]]))
    cli("apply", "-f", MANIFESTS)
    cli("apply", "-f", str(folder))
    code, out, _ = cli("delete", "-f", str(folder))
    assert code == 0, out
    lines = out.strip().splitlines()
    # In reverse order: what uses an object goes before it, the namespace last.
    assert lines[0] == "schedule/renewal-check -n globex deleted"
    assert lines[-1] == "namespace/globex deleted"
    code, out, _ = cli("get", "namespaces", "-o", "name")
    assert out.split() == ["namespace/acme"]
    code, _, err = cli("delete", "-f", str(folder))
    assert code == 1 and "HTTP 404" in one_error_line(err)
    code, out, _ = cli("delete", "-f", str(folder), "--ignore-not-found")
    assert code == 0 and "namespace/globex not found" in out
    code, _, err = cli("delete", "agent", "-n", "acme")
    assert code == 1 and "KIND NAME or -f" in one_error_line(err)


def test_get_turns_of_a_session(cli, start_worker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cli("apply", "-f", MANIFESTS)
    start_worker(demo_fallback=True)
    cli("send", "customer-support", "s1", "One.", "-n", "acme")
    cli("send", "customer-support", "s1", "Two.", "-n", "acme")
    scope = ("-n", "acme", "--agent", "customer-support", "--session", "s1")
    code, out, _ = cli("get", "turns", *scope)
    rows = [line.split() for line in out.strip().splitlines()]
    assert rows[0] == ["TURN", "STATE", "ATTEMPT", "DETAIL", "EVENT"]
    assert [r[1] for r in rows[1:]] == ["completed", "completed"]
    turn_id = rows[1][0]
    code, out, _ = cli("get", "turn", turn_id, *scope)
    assert code == 0 and out.splitlines()[1].split()[:2] == [turn_id, "completed"]
    assert "write-next-message" in out  # its steps
    code, out, _ = cli("get", "turn", turn_id, *scope, "-o", "json")
    assert json.loads(out)["id"] == turn_id
    code, _, err = cli("get", "turns", "-n", "acme", "--agent", "customer-support")
    assert code == 1 and "--session" in one_error_line(err)
    code, out, _ = cli("get", "sessions", "-n", "acme", "--agent", "customer-support", "-o", "name")
    assert out == "session/s1\n"
    code, out, _ = cli("get", "sessions", "-A", "-o", "wide")
    header, row = out.strip().splitlines()
    assert header.split()[:3] == ["NAMESPACE", "AGENT", "ID"] and "ACTIVE" in header
    assert row.split()[:4] == ["acme", "customer-support", "s1", "active"]
    code, out, _ = cli("get", "sessions", "-n", "acme", "--agent", "customer-support",
                       "-o", "jsonpath={.items[0].messageCount}")  # fmt: skip
    assert out.strip() == "4"


class Watcher:
    """`talon get ... --watch` in a subprocess (its own process group), its lines collected."""

    def __init__(self, url: str, *argv: str) -> None:
        env = {**os.environ, "TALON_URL": url, "TALON_TOKEN": ADMIN_TOKEN,
               "TALON_CLI_CONFIG": os.devnull, "PYTHONUNBUFFERED": "1"}  # fmt: skip
        self.process = subprocess.Popen(
            [sys.executable, "-m", "talon.cli.main", *argv], env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, predicate: Any, timeout: float = 30) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.lines if predicate(line)]
            if found:
                return found
            assert self.process.poll() is None, (self.lines, self.process.stderr)
            time.sleep(0.1)
        raise AssertionError(f"not seen in {timeout}s: {self.lines}")

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C: the watch ends cleanly (exit 0, nothing on stderr)."""
        self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout=10)
        finally:
            self.kill()
        assert self.process.stderr is not None
        return code, self.process.stderr.read()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def watchers() -> Iterator[list[Watcher]]:
    started: list[Watcher] = []
    yield started
    for watcher in started:
        watcher.kill()


def test_watch_follows_sessions_and_turns_until_ctrl_c(
    cli, start_worker, gateway_url: str, watchers: list[Watcher],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cli("apply", "-f", MANIFESTS)
    start_worker(demo_fallback=True)
    cli("send", "customer-support", "s1", "One.", "-n", "acme")
    scope = ("-n", "acme", "--agent", "customer-support")
    turns = Watcher(gateway_url, "get", "turns", *scope, "--session", "s1", "--watch")
    sessions = Watcher(gateway_url, "get", "sessions", *scope, "--watch")
    watchers += [turns, sessions]
    turns.wait_for(lambda line: " completed " in line)
    sessions.wait_for(lambda line: line.startswith("s1 "))

    with Client(gateway_url, ADMIN_TOKEN) as sdk:
        sdk.create_session("acme", "customer-support", "s2")
        accepted = sdk.send("acme", "customer-support", "s1", "Two.")
    turns.wait_for(lambda line: line.startswith(accepted.turn_id) and " completed " in line)
    sessions.wait_for(lambda line: line.startswith("s2 "))
    for watcher in (turns, sessions):
        code, err = watcher.interrupt()
        assert (code, err) == (0, "")


def test_send_reports_a_tool_server_the_agent_cannot_reach(
    cli, start_worker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The example servers' secrets are set but nothing listens where stripe-readonly points:
    `talon send` names the server and why, and the turn goes on without it."""
    from talon.store.local_postgres import free_port

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("STRIPE_READONLY_AUTHORIZATION", "Bearer x")
    monkeypatch.setenv("HUBSPOT_READONLY_AUTHORIZATION", "Bearer y")
    cli("apply", "-f", MANIFESTS)
    dead = f"http://127.0.0.1:{free_port()}/mcp"
    code, shown, _ = cli("get", "mcp-server", "stripe-readonly", "-n", "acme", "-o", "yaml")
    server = yaml.safe_load(shown)
    server["spec"]["url"] = dead
    server.pop("status", None)
    (tmp_path / "server.yaml").write_text(yaml.safe_dump(server))
    assert cli("apply", "-f", str(tmp_path / "server.yaml"))[0] == 0
    start_worker(demo_fallback=True)
    code, out, _ = cli("send", "customer-support", "s1", "Review renewals.", "-n", "acme")
    assert code == 0, out
    lines = [line for line in out.splitlines() if "tools unavailable" in line]
    assert (
        lines[0]
        == f"  tools unavailable: mcp:stripe-readonly: {dead}: All connection attempts failed"
    )
    assert lines[1].startswith("  tools unavailable: mcp:hubspot-readonly: ")  # not running here
    assert out.strip().splitlines()[-1] == "turn completed"


def test_cancel_a_sessions_open_turns(cli) -> None:
    cli("apply", "-f", MANIFESTS)  # no worker: the turn stays queued
    code, out, _ = cli("send", "customer-support", "s1", "Wait.", "-n", "acme", "--no-wait")
    turn_id = out.split()[1]
    code, out, _ = cli("cancel", "customer-support", "s1", "-n", "acme")
    assert (code, out) == (0, f"turn {turn_id} cancelled\n")
    code, out, _ = cli("cancel", "customer-support", "s1", "-n", "acme")
    assert (code, out) == (0, "no open turn to cancel\n")
    code, out, _ = cli("get", "turns", "-n", "acme", "--agent", "customer-support",
                       "--session", "s1", "-o", "name")  # fmt: skip
    assert out == f"turn/{turn_id}\n"
    code, out, _ = cli("get", "turn", turn_id, "-n", "acme", "--agent", "customer-support",
                       "--session", "s1", "-o", "jsonpath={.state}")  # fmt: skip
    assert out.strip() == "cancelled"
