"""Dependencies: every package the code under shared/talon and functions/ imports is declared
in pyproject.toml (none arrives only with another package), every declared one is used, and
requirements.lock pins each of them, inside pyproject's range, with hashes. The checks live in
scripts/check_deps.py (scripts/test runs its lock check before pytest); these tests run them
on the real files, and on altered copies to show that they catch what they are for."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from types import ModuleType
from typing import Any

import pytest

from conftest import ROOT

pytestmark = pytest.mark.fast


def _load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_deps", ROOT / "scripts" / "check_deps.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_deps = _load_checker()


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def found() -> dict[str, set[str]]:
    return check_deps.imports()


@pytest.fixture(scope="module")
def owners() -> dict[str, str]:
    return check_deps.module_owners()


def _without(pyproject: dict[str, Any], name: str) -> dict[str, Any]:
    project = dict(pyproject["project"])
    project["dependencies"] = [d for d in project["dependencies"] if not d.startswith(name)]
    assert len(project["dependencies"]) == len(pyproject["project"]["dependencies"]) - 1
    return {**pyproject, "project": project}


def test_every_imported_package_is_declared_and_every_declared_one_is_imported(
    pyproject: dict[str, Any], found: dict[str, set[str]], owners: dict[str, str]
) -> None:
    assert check_deps.import_problems(pyproject, found, owners) == []


def test_imports_are_traced_to_the_package_that_installs_them(
    found: dict[str, set[str]], owners: dict[str, str]
) -> None:
    # Namespace packages are told apart by their longer names.
    assert check_deps.owner_of("google.oauth2.id_token", owners) == "google-auth"
    assert check_deps.owner_of("google.cloud.tasks_v2", owners) == "google-cloud-tasks"
    assert check_deps.owner_of("google.cloud.sql.connector.Connector", owners) == (
        "cloud-sql-python-connector"
    )
    assert check_deps.owner_of("google.protobuf.timestamp_pb2", owners) == "protobuf"
    assert check_deps.owner_of("grpc", owners) == "grpcio"
    # Lazy imports inside functions count; the MCP client's transport is built on httpx2.
    assert "shared/talon/api/ops_proxy.py" in found["google.oauth2.id_token"]
    assert "shared/talon/tenancy/http_guard.py" in found["httpx2"]


def test_the_import_check_finds_an_undeclared_and_an_unused_package(
    pyproject: dict[str, Any], found: dict[str, set[str]], owners: dict[str, str]
) -> None:
    problems = check_deps.import_problems(_without(pyproject, "werkzeug"), found, owners)
    importers = sorted({f for module, files in found.items() if module.startswith("werkzeug.")
                        for f in files})  # fmt: skip
    assert "shared/talon/api/app.py" in importers
    assert problems == [
        f"werkzeug is imported (by {', '.join(importers)}) but not declared in pyproject.toml"
    ]
    project = {**pyproject["project"]}
    project["dependencies"] = [*project["dependencies"], "six>=1"]
    problems = check_deps.import_problems({**pyproject, "project": project}, found, owners)
    assert problems == ["six is declared in pyproject.toml but nothing imports it"]


def test_the_lock_pins_every_declared_dependency_in_range_with_hashes(
    pyproject: dict[str, Any],
) -> None:
    lock = (ROOT / "requirements.lock").read_text()
    assert check_deps.lock_problems(pyproject, lock) == []
    pins = check_deps.parse_lock(lock)
    assert str(pins["openai"][0].specifier).startswith("==3.")  # the major tested
    assert all(hashes for _, hashes in pins.values())


def _entry(name: str) -> re.Pattern[str]:
    """A package's entry in the lock: its pin line and the indented lines after it."""
    return re.compile(rf"^{re.escape(name)}==[^\n]*\n(?:    [^\n]*\n)*", re.MULTILINE)


def test_the_lock_check_finds_a_missing_an_outdated_and_an_unhashed_pin(
    pyproject: dict[str, Any],
) -> None:
    lock = (ROOT / "requirements.lock").read_text()
    missing = _entry("cachecontrol").sub("", lock)
    assert check_deps.lock_problems(pyproject, missing)[0] == (
        "cachecontrol<0.15,>=0.14 is declared in pyproject.toml but not in requirements.lock"
    )
    old = re.sub(r"^openai==[\d.]+", "openai==2.9.0", lock, flags=re.MULTILINE)
    assert check_deps.lock_problems(pyproject, old)[0].startswith(
        "requirements.lock pins openai==2.9.0, outside openai"
    )
    unhashed = _entry("tenacity").sub("tenacity==9.1.2\n", lock)
    assert check_deps.lock_problems(pyproject, unhashed)[0] == (
        "requirements.lock: tenacity has no --hash"
    )


def test_the_script_passes_on_the_repository() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_deps.py")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
