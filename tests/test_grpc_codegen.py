"""The checked-in gRPC code (shared/talon/grpc/gen) is exactly what scripts/gen_proto
generates from shared/proto/talon/v1: edited by hand or stale after a .proto change, it fails."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.fast

GENERATED = ROOT / "shared" / "talon" / "grpc" / "gen"


def _generate(out: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), str(out)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


def _differences(left: Path, right: Path) -> list[str]:
    compared = filecmp.dircmp(left, right, ignore=["__pycache__"])
    _, mismatch, errors = filecmp.cmpfiles(left, right, compared.common_files, shallow=False)
    return sorted([*compared.left_only, *compared.right_only, *mismatch, *errors])


def test_generated_code_matches_the_proto_files(tmp_path: Path) -> None:
    _generate(tmp_path / "gen")
    assert _differences(tmp_path / "gen", GENERATED) == []


def test_the_check_sees_a_drifted_proto(tmp_path: Path) -> None:
    fresh = tmp_path / "gen"
    _generate(fresh)
    edited = fresh / "agents_pb2.pyi"
    edited.write_text(edited.read_text() + "# edited by hand\n")
    (fresh / "stray_pb2.py").write_text("")
    assert _differences(fresh, GENERATED) == ["agents_pb2.pyi", "stray_pb2.py"]
