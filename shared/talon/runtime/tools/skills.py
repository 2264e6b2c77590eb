"""Directory skills (`skills/<name>/SKILL.md`: YAML frontmatter with `name` and
`description`, the body is the instructions) as a tool source. The model sees one tool per
skill the agent's template selects, `skill.<name>`, described by the frontmatter; calling it
returns the instructions (progressive disclosure: the full text costs context only when the
model decides it needs it).

A malformed skill is reported with its file and the reason, and skipped; it never stops the
worker from starting.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import frontmatter
import yaml

from talon.runtime.providers.base import ToolSpec
from talon.runtime.tools.base import AgentContext, ToolResult, Toolset

log = logging.getLogger(__name__)
PREFIX = "skill."
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$")
MAX_DESCRIPTION_CHARS = 1024
MAX_BODY_CHARS = 64_000
_NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass(frozen=True)
class Skill:
    name: str
    description: str
    instructions: str
    path: Path
    metadata: dict[str, Any]


@dataclass(frozen=True)
class SkillProblem:
    path: Path
    reason: str


def load_skills(root: Path) -> tuple[dict[str, Skill], list[SkillProblem]]:
    """Every valid skill under `root/*/SKILL.md`, and what is wrong with the others."""
    skills: dict[str, Skill] = {}
    problems: list[SkillProblem] = []
    if not root.is_dir():
        return skills, problems
    for path in sorted(root.glob("*/SKILL.md")):
        try:
            skill = _parse(path)
        except SkillError as exc:
            problems.append(SkillProblem(path, str(exc)))
            continue
        if skill.name in skills:
            problems.append(SkillProblem(path, f"name {skill.name!r} is already used by "
                                               f"{skills[skill.name].path}"))  # fmt: skip
            continue
        skills[skill.name] = skill
    for problem in problems:
        log.error("skipping skill %s: %s", problem.path, problem.reason)
    return skills, problems


class SkillError(ValueError):
    pass


def _parse(path: Path) -> Skill:
    try:
        post = frontmatter.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SkillError(f"cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise SkillError(f"frontmatter is not valid YAML: {exc}".replace("\n", " ")) from exc
    meta = dict(post.metadata)
    name, description = meta.pop("name", None), meta.pop("description", None)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SkillError("frontmatter `name` is missing or not a lowercase name (a-z, 0-9, -, _)")
    if name != path.parent.name:
        raise SkillError(f"frontmatter name {name!r} differs from its folder {path.parent.name!r}")
    if not isinstance(description, str) or not description.strip():
        raise SkillError("frontmatter `description` is missing or empty")
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise SkillError(f"`description` is longer than {MAX_DESCRIPTION_CHARS} characters")
    body = post.content.strip()
    if not body:
        raise SkillError("the instructions (the text after the frontmatter) are empty")
    if len(body) > MAX_BODY_CHARS:
        raise SkillError(f"the instructions are longer than {MAX_BODY_CHARS} characters")
    return Skill(name, description.strip(), body, path, meta)


class SkillToolSource:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.skills, self.problems = load_skills(root)

    def tools_for(self, context: AgentContext) -> Toolset:
        tools, unavailable = [], []
        for name in context.effective.get("skills") or []:
            skill = self.skills.get(name)
            if skill is None:
                missing = f"no valid skill {name!r} in {self.root}"
                unavailable.append({"source": f"skill:{name}", "error": missing})
                continue
            description = f"{skill.description} (Call to read this skill's instructions.)"
            tools.append(ToolSpec(f"{PREFIX}{name}", description, _NO_ARGUMENTS))
        return Toolset(tools, unavailable)

    def call(self, context: AgentContext, name: str, arguments: dict[str, Any]) -> ToolResult:
        skill_name = name.removeprefix(PREFIX)
        skill = self.skills.get(skill_name)
        if skill is None or skill_name not in (context.effective.get("skills") or []):
            return ToolResult(f"error: skill {skill_name!r} is not available to this agent", True)
        return ToolResult(skill.instructions)
