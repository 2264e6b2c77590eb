"""Skills from `skills/*/SKILL.md`: frontmatter parsed, malformed ones reported with file and
reason and skipped, only the template's skills offered, instructions returned on call."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from conftest import ROOT
from talon.runtime.tools.base import AgentContext
from talon.runtime.tools.skills import SkillToolSource, load_skills

pytestmark = pytest.mark.fast


def _write(root: Path, folder: str, text: str) -> Path:
    path = root / folder / "SKILL.md"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path


def _context(skills: list[str]) -> AgentContext:
    return AgentContext("acme", "bot", "s", {"skills": skills}, {})


def test_the_shipped_skill_loads(caplog: pytest.LogCaptureFixture) -> None:
    skills, problems = load_skills(ROOT / "skills")
    assert problems == []
    skill = skills["renewal-outreach"]
    assert skill.description.startswith("Playbook for reviewing a customer's upcoming renewal")
    assert "stripe-readonly.list_invoices" in skill.instructions
    assert skill.metadata == {"metadata": {"owner": "customer-success", "version": 1}}


def test_malformed_skills_are_reported_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = _write(tmp_path, "triage", "---\nname: triage\ndescription: Sort tickets.\n---\nDo.")
    bad = {
        _write(tmp_path, "no-name", "---\ndescription: x\n---\nbody"): "`name` is missing",
        _write(tmp_path, "other", "---\nname: elsewhere\ndescription: x\n---\nbody"):
            "differs from its folder",
        _write(tmp_path, "broken", "---\nname: [unclosed\n---\nbody"): "not valid YAML",
        _write(tmp_path, "empty", "---\nname: empty\ndescription: x\n---\n\n"):
            "instructions (the text after the frontmatter) are empty",
        _write(tmp_path, "mute", "---\nname: mute\n---\nbody"): "`description` is missing",
        _write(tmp_path, "Caps", "---\nname: Caps\ndescription: x\n---\nbody"):
            "not a lowercase name",
    }  # fmt: skip
    with caplog.at_level(logging.ERROR):
        skills, problems = load_skills(tmp_path)
    assert list(skills) == ["triage"] and skills["triage"].path == good
    assert {p.path: p.reason for p in problems}.keys() == bad.keys()
    for problem in problems:
        assert bad[problem.path] in problem.reason, problem
        assert str(problem.path) in caplog.text  # logged with the file, not raised


def test_only_the_templates_skills_are_offered_and_callable(tmp_path: Path) -> None:
    _write(tmp_path, "triage", "---\nname: triage\ndescription: Sort tickets.\n---\nStep 1.")
    _write(tmp_path, "refunds", "---\nname: refunds\ndescription: Refunds.\n---\nNever.")
    source = SkillToolSource(tmp_path)
    toolset = source.tools_for(_context(["triage", "missing"]))
    assert [t.name for t in toolset.tools] == ["skill.triage"]
    assert toolset.tools[0].description.startswith("Sort tickets.")
    assert toolset.unavailable[0]["source"] == "skill:missing"
    assert source.call(_context(["triage"]), "skill.triage", {}).content == "Step 1."
    refused = source.call(_context(["triage"]), "skill.refunds", {})
    assert refused.is_error and "not available" in refused.content


def test_a_missing_skills_folder_is_not_an_error(tmp_path: Path) -> None:
    assert load_skills(tmp_path / "nowhere") == ({}, [])
