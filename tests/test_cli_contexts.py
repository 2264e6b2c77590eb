"""Contexts (`talon config ...`): the file, its mode, which of flags, environment and context
wins; shell completion. The last test runs commands against a live gateway through a context."""

from __future__ import annotations

import argparse
import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import test_cli
import yaml

from conftest import ADMIN_TOKEN
from talon.cli import contexts
from talon.cli.client import CliError
from talon.cli.main import main
from talon.client import AsyncClient, Client

MANIFESTS = test_cli.MANIFESTS


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "conf" / "talon" / "config.yaml"
    monkeypatch.setenv("TALON_CLI_CONFIG", str(path))
    for name in ("TALON_URL", "TALON_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return path


def talon(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def target(url: str | None = None, token: str | None = None, context: str | None = None):
    return contexts.resolve(argparse.Namespace(url=url, token=token, context=context))


@pytest.mark.fast
def test_contexts_are_kept_in_a_file_only_its_owner_reads(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert talon(capsys, "config", "get-contexts")[1].split() == [
        "CURRENT", "NAME", "URL", "NAMESPACE", "TOKEN"
    ]  # fmt: skip
    code, out, _ = talon(capsys, "config", "set-context", "dev", "--url", "http://127.0.0.1:8080",
                         "--token", "tln_dev", "-n", "acme")  # fmt: skip
    assert (code, out) == (0, 'Context "dev" created.\n')
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    talon(capsys, "config", "set-context", "prod", "--url", "https://talon.example.com")
    saved = yaml.safe_load(config.read_text())
    assert saved["currentContext"] == "dev"  # the first context becomes the current one
    assert saved["contexts"][0] == {"name": "dev", "url": "http://127.0.0.1:8080",
                                    "token": "tln_dev", "namespace": "acme"}  # fmt: skip

    rows = [line.split() for line in talon(capsys, "config", "get-contexts")[1].splitlines()]
    assert rows[1:] == [["*", "dev", "http://127.0.0.1:8080", "acme", "set"],
                        ["prod", "https://talon.example.com"]]  # fmt: skip
    assert talon(capsys, "config", "use-context", "prod")[1] == 'Switched to context "prod".\n'
    assert talon(capsys, "config", "current-context")[1] == "prod\n"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600

    viewed = yaml.safe_load(talon(capsys, "config", "view")[1])
    assert viewed["contexts"][0]["token"] == "REDACTED" and "token" not in viewed["contexts"][1]
    assert yaml.safe_load(talon(capsys, "config", "view", "--raw")[1]) == yaml.safe_load(
        config.read_text()
    )
    talon(capsys, "config", "set-context", "dev", "--token", "")  # '' removes a field
    assert "token" not in yaml.safe_load(config.read_text())["contexts"][0]
    code, _, err = talon(capsys, "config", "use-context", "staging")
    assert code == 1 and "no context 'staging'" in err and "known: dev, prod" in err
    assert talon(capsys, "config", "delete-context", "prod")[0] == 0
    code, _, err = talon(capsys, "config", "current-context")
    assert code == 1 and "no current context" in err


@pytest.mark.fast
def test_flags_win_over_the_environment_which_wins_over_the_context(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert target().url == contexts.DEFAULT_URL and target().token is None
    contexts.save({"currentContext": "dev", "contexts": [
        {"name": "dev", "url": "http://ctx:1", "token": "tln_ctx", "namespace": "acme"},
        {"name": "other", "url": "http://other:2"}]})  # fmt: skip
    assert (target().url, target().token, target().namespace) == ("http://ctx:1", "tln_ctx",
                                                                   "acme")  # fmt: skip
    assert target(context="other").url == "http://other:2"
    monkeypatch.setenv("TALON_URL", "http://env:3")
    monkeypatch.setenv("TALON_TOKEN", "tln_env")
    assert (target().url, target().token) == ("http://env:3", "tln_env")
    assert (target("http://flag:4", "tln_flag").url, target("http://flag:4", "tln_flag").token) == (
        "http://flag:4", "tln_flag"
    )  # fmt: skip
    with pytest.raises(CliError, match="no context 'missing'"):
        target(context="missing")


@pytest.mark.fast
def test_the_sdk_connects_where_the_cli_does(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    contexts.save({"currentContext": "dev", "contexts": [
        {"name": "dev", "url": "http://ctx:1", "token": "tln_ctx"},
        {"name": "other", "url": "http://other:2"}]})  # fmt: skip
    with Client.from_env() as sdk:
        assert sdk.base_url == "http://ctx:1"
        assert sdk._http.headers["Authorization"] == "Bearer tln_ctx"
    with Client.from_env(context="other") as sdk:
        assert sdk.base_url == "http://other:2" and "Authorization" not in sdk._http.headers
    monkeypatch.setenv("TALON_URL", "http://env:3")
    async_sdk = AsyncClient.from_env()
    assert async_sdk.base_url == "http://env:3"
    asyncio.run(async_sdk.aclose())


@pytest.mark.fast
def test_a_broken_config_file_is_one_line(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config.parent.mkdir(parents=True)
    config.write_text("contexts: [oops\n")
    code, _, err = talon(capsys, "get", "namespaces")
    assert code == 1 and err.startswith(f"error: {config}: not valid YAML")


@pytest.mark.fast
def test_shell_completion(tmp_path: Path) -> None:
    for shell, marker in (("bash", "complete "), ("zsh", "#compdef talon"), ("fish", "complete")):
        script = subprocess.run([sys.executable, "-m", "talon.cli.main", "completion", shell],
                                capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert marker in script and "talon" in script
    # What the shell function does on TAB: runs talon with the line, reads the words.
    words = tmp_path / "words"
    env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": "talon get mcp-",
           "COMP_POINT": "14", "_ARGCOMPLETE_STDOUT_FILENAME": str(words)}  # fmt: skip
    subprocess.run([sys.executable, "-m", "talon.cli.main"], env=env, check=True)
    assert sorted(words.read_text().split("\x0b")) == ["mcp-bindings", "mcp-servers"]
    # Each TAB runs talon: the parser is built without importing the SDK (httpx, pydantic).
    check = "import sys, talon.cli.main; print(sorted({'httpx', 'pydantic'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                            check=True).stdout  # fmt: skip
    assert loaded.strip() == "[]"


def test_commands_use_the_current_context(
    gateway_url: str, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    talon(capsys, "config", "set-context", "local", "--url", gateway_url, "--token", ADMIN_TOKEN,
          "--namespace", "acme")  # fmt: skip
    assert talon(capsys, "apply", "-f", MANIFESTS)[0] == 0
    code, out, _ = talon(capsys, "get", "agents", "-o", "name")  # -n from the context
    assert (code, out) == (0, "agent/customer-support\n")
    code, _, err = talon(capsys, "--token", "wrong", "get", "agents")  # the flag wins
    assert code == 1 and "HTTP 401" in err
    talon(capsys, "config", "set-context", "elsewhere", "--url", "http://127.0.0.1:9")
    code, _, err = talon(capsys, "--context", "elsewhere", "get", "namespaces")
    assert code == 1 and "cannot reach the gateway at http://127.0.0.1:9" in err
