"""The `talon` CLI against a live gateway over HTTP."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import ADMIN_TOKEN, ROOT, Api
from talon.cli.main import main

MANIFESTS = str(ROOT / "manifests")


@pytest.fixture
def cli(
    gateway_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path_factory: pytest.TempPathFactory,
):
    monkeypatch.setenv("TALON_URL", gateway_url)
    monkeypatch.setenv("TALON_TOKEN", ADMIN_TOKEN)
    # No contexts but the test's own (never the user's ~/.config/talon/config.yaml).
    config = tmp_path_factory.mktemp("talon-cli") / "config.yaml"
    monkeypatch.setenv("TALON_CLI_CONFIG", str(config))

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")


def one_error_line(err: str) -> str:
    # The gateway runs in this process, so its log lines share stderr; leave them out.
    lines = [line for line in err.strip().splitlines() if not LOG_LINE.match(line)]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_apply_get_delete_round_trip(cli) -> None:
    code, out, _ = cli("apply", "-f", MANIFESTS)
    assert code == 0
    assert "namespace/acme created" in out
    assert "agent/customer-support -n acme created" in out
    assert "schedule/renewal-check -n acme created" in out

    code, out, _ = cli("get", "agents", "-n", "acme")
    assert code == 0
    header, row = out.strip().splitlines()
    assert header.split() == ["NAME", "TEMPLATE", "PHASE", "AGE"]
    assert row.split()[:3] == ["customer-support", "customer-support", "Resolved"]

    code, out, _ = cli("get", "agent", "customer-support", "-n", "acme", "-o", "yaml")
    agent = yaml.safe_load(out)
    assert agent["kind"] == "Agent" and agent["status"]["phase"] == "Resolved"

    code, out, _ = cli("get", "schedules", "-n", "acme", "-o", "json")
    listing = json.loads(out)
    assert listing["kind"] == "ScheduleList"
    assert listing["items"][0]["spec"]["timezone"] == "America/Los_Angeles"

    code, out, _ = cli("get", "mcp-bindings", "-n", "acme", "-l", "app=nothing")
    assert code == 0 and out == ""

    code, out, _ = cli("apply", "-f", MANIFESTS)
    assert code == 0 and "created" not in out and "unchanged" in out

    code, out, _ = cli("delete", "schedule", "renewal-check", "-n", "acme")
    assert (code, out.strip()) == (0, "schedule/renewal-check deleted")
    code, _, err = cli("get", "schedule", "renewal-check", "-n", "acme")
    assert code == 1
    assert "not found" in one_error_line(err) and "HTTP 404" in err


def test_errors_are_one_line_with_non_zero_exit(cli, tmp_path: Path) -> None:
    cli("apply", "-f", MANIFESTS)
    code, _, err = cli("delete", "template", "customer-support", "-n", "acme")
    assert code == 1
    assert "still in use by Agent/customer-support" in one_error_line(err)

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: talon.dev/v1alpha1\nkind: Namespace\nmetadata: {name: ok}\n---\n"
        "apiVersion: talon.dev/v1alpha1\nkind: Schedule\nmetadata: {name: s, namespace: acme}\n"
        "spec: {cron: 'nope', target: {agent: customer-support, sessionId: x}, inputMessage: hi}\n"
    )
    code, _, err = cli("apply", "-f", str(bad))
    assert code == 1
    assert f"{bad}#2: spec.cron" in one_error_line(err)

    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\n")
    code, _, err = cli("apply", "-f", str(broken))
    assert code == 1 and f"{broken}: not valid YAML" in one_error_line(err)

    for argv in (
        ("get", "agents"),
        ("get", "widgets", "-n", "acme"),
        ("apply", "-f", str(tmp_path / "missing.yaml")),
        ("--token", "wrong", "get", "namespaces"),
        ("--url", "http://127.0.0.1:9", "get", "namespaces"),
    ):
        code, _, err = cli(*argv)
        assert code == 1, argv
        one_error_line(err)


def test_dry_run_saves_nothing(cli) -> None:
    code, out, _ = cli("apply", "-f", MANIFESTS, "--dry-run")
    assert code == 0 and "namespace/acme created (dry run)" in out
    code, _, err = cli("get", "namespaces")
    assert code == 0 and "No namespaces found" in err


def test_tokens_create_list_revoke(cli) -> None:
    cli("apply", "-f", MANIFESTS)
    code, out, _ = cli("tokens", "create", "support-bot", "--role", "write", "-n", "acme")
    assert code == 0
    token_id = out.split()[1]
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("tln_")

    code, out, _ = cli("--token", secret, "whoami")
    who = yaml.safe_load(out)
    assert (who["tokenId"], who["role"], who["namespaces"]) == (token_id, "write", ["acme"])
    code, out, _ = cli("--token", secret, "get", "agents", "-n", "acme")
    assert code == 0 and "customer-support" in out

    code, out, _ = cli("tokens", "list")
    row = next(line for line in out.splitlines() if line.startswith(token_id))
    assert row.split()[1:6] == ["support-bot", "write", "acme", "(all)", "active"]

    # A token brokered for an agent: one namespace, two talon-ops tools, ten minutes.
    tools = ["--tool", "read_session", "--tool", "inspect_turn"]
    code, out, _ = cli("tokens", "create", "inspector", "-n", "acme", "--ttl", "600", *tools,
                       "-o", "json")  # fmt: skip
    brokered = json.loads(out)
    assert (brokered["tools"], brokered["namespaces"]) == (
        ["inspect_turn", "read_session"],
        ["acme"],
    )
    code, _, err = cli("--token", brokered["token"], "get", "agents", "-n", "acme")
    assert code == 1 and "talon-ops" in one_error_line(err)

    code, out, _ = cli("tokens", "revoke", token_id)
    assert (code, out.strip()) == (0, f"token {token_id} revoked")
    code, _, err = cli("--token", secret, "get", "agents", "-n", "acme")
    assert code == 1 and "HTTP 401" in one_error_line(err)


def test_send_follows_the_turn_and_get_session_shows_the_seed_shape(
    cli, start_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cli("apply", "-f", MANIFESTS)
    start_worker(demo_fallback=True)
    code, out, _ = cli("send", "customer-support", "enterprise-renewals",
                       "Review renewals due in 14 days.", "-n", "acme")  # fmt: skip
    assert code == 0
    # The demo model reads the template's skill first (the example MCP servers are not running
    # here, so the skill's next tool is the built-in clock).
    assert "call-skill.renewal-outreach" in out
    assert "assistant: (demo model) Here is what the tools returned. skill.renewal-outreach" in out
    assert out.strip().splitlines()[-1] == "turn completed"
    # No example MCP servers run here: `send` says the turn went on without them.
    assert "tools unavailable: mcp:stripe-readonly: " in out

    code, out, _ = cli("get", "session", "enterprise-renewals", "-n", "acme",
                       "--agent", "customer-support")  # fmt: skip
    view = yaml.safe_load(out)
    assert {k: view[k] for k in ("id", "agent", "ns", "status")} == {
        "id": "enterprise-renewals", "agent": "customer-support", "ns": "acme", "status": "active"
    }  # fmt: skip
    assert [m["role"] for m in view["messages"]][::len(view["messages"]) - 1] == [
        "user", "assistant"
    ]  # fmt: skip
    assert [s["step"] for s in view["stream"]] == [
        "load-knowledge", "call-model", "call-skill.renewal-outreach", "call-model",
        "call-talon.current_time", "call-model", "write-next-message",
    ]  # fmt: skip

    code, out, _ = cli("stream", "customer-support", "enterprise-renewals", "-n", "acme",
                       "--after", "0", "--until-turn-end", "-o", "json")  # fmt: skip
    streamed = [json.loads(line) for line in out.strip().splitlines()]
    assert [e["id"] for e in streamed] == list(range(1, len(streamed) + 1))
    # No example MCP servers run here: the turn went on without them, and said so.
    (unavailable,) = [e for e in streamed if e["type"] == "tools.unavailable"]
    assert [s["source"] for s in unavailable["data"]["sources"]] == [
        "mcp:stripe-readonly", "mcp:hubspot-readonly"
    ]  # fmt: skip

    code, _, err = cli("get", "sessions", "-n", "acme")
    assert code == 1 and "--agent" in one_error_line(err)
    code, out, _ = cli("delete", "session", "enterprise-renewals", "-n", "acme",
                       "--agent", "customer-support")  # fmt: skip
    assert (code, out.strip()) == (0, "session/enterprise-renewals deleted")


@pytest.mark.parametrize(
    "argv",
    [["worker", "--max-attempts", "0"], ["worker", "--concurrency", "0"],
     ["worker", "--max-attempts", "many"]],
)  # fmt: skip
def test_worker_options_must_be_at_least_one(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "must be a whole number of at least 1" in capsys.readouterr().err


def test_send_marks_a_failed_tool_call_and_exits_non_zero_when_the_turn_fails(
    cli, api: Api, model_server: Any, start_worker: Any
) -> None:
    """The model calls a tool the agent does not have (the call's error is shown, marked
    failed), then every profile fails: `talon send` prints why and exits 1; the answer of a
    turn that streams is printed as it arrives."""
    from test_models import _agent_with_policy, policy

    _agent_with_policy(api, policy(model_server.url, "primary"))
    model_server.add(
        {"tool_calls": [{"name": "delete_everything", "unoffered": True}]},
        {"status": 500}, {"status": 500},
        {"pieces": ["Streamed ", "answer."], "chunk_delay": 0.05},
    )  # fmt: skip
    start_worker()
    code, out, _ = cli("send", "bot", "s1", "Do something drastic.", "-n", "acme")
    assert code == 1, out
    assert re.search(r"call-delete_everything +failed: error: ", out), out
    assert out.strip().splitlines()[-1].startswith("turn failed: every model profile failed")
    code, out, _ = cli("send", "bot", "s1", "Then answer.", "-n", "acme")
    assert code == 0 and "assistant: Streamed answer." in out
    assert out.count("Streamed answer.") == 1  # printed as it streamed, not again at the end


def test_diff_shows_field_changes_from_the_servers_dry_run(cli, tmp_path: Path) -> None:
    code, _, _ = cli("apply", "-f", MANIFESTS)
    assert code == 0
    code, out, _ = cli("diff", "-f", MANIFESTS)
    assert (code, out) == (0, "")  # nothing would change
    schedule = yaml.safe_load((ROOT / "manifests" / "50-schedule.yaml").read_text())
    schedule["spec"]["cron"] = "0 15 * * 1-5"
    schedule["metadata"]["labels"] = {"team": "revenue"}
    fresh = {**yaml.safe_load((ROOT / "manifests" / "00-namespace.yaml").read_text())}
    fresh["metadata"] = {"name": "globex"}
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump_all([schedule, fresh]))
    code, out, _ = cli("diff", "-f", str(tmp_path / "changed.yaml"))
    assert code == 1
    assert "~ schedule/renewal-check -n acme" in out
    assert '    ~ spec.cron: "0 14 * * 1-5" -> "0 15 * * 1-5"' in out
    assert '    + metadata.labels.team: "revenue"' in out
    assert "+ namespace/globex (new)" in out
    code, out, _ = cli("get", "schedule", "renewal-check", "-n", "acme", "-o", "json")
    assert json.loads(out)["spec"]["cron"] == "0 14 * * 1-5"  # a diff changes nothing
    broken = {**schedule, "spec": {**schedule["spec"], "cron": "not a cron"}}
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    code, _, err = cli("diff", "-f", str(tmp_path / "broken.yaml"))
    assert code == 2 and "spec.cron" in one_error_line(err)
