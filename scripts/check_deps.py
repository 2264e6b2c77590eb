"""Check that Talon's dependencies are declared and locked.

    .venv/bin/python scripts/check_deps.py [--imports] [--lock]   (both when neither is given)

--imports: every third-party package that the code under shared/talon and functions/ imports
is declared in pyproject.toml, and every declared one is imported (or listed in RUNTIME_ONLY
with the reason). A package that only comes with another one can disappear, or change major
version, when that other one is upgraded. Needs the virtualenv with Talon installed: a module
is traced to the installed distribution that holds its file.

--lock: requirements.lock, which the deployed functions install with --require-hashes, pins
every dependency pyproject.toml declares, at a version inside its range, and every pin has
hashes. It does not re-resolve (scripts/lock does that, from PyPI).

Prints the problems and exits 1 if there are any.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parents[1]
SOURCES = (ROOT / "shared" / "talon", ROOT / "functions")
LOCK = ROOT / "requirements.lock"
FIRST_PARTY = {"talon"}
# Extras that are part of the product (installed on request), unlike test/dev tooling.
PRODUCT_EXTRAS = {"local-pg"}
# Declared but never imported, on purpose.
RUNTIME_ONLY = {"tzdata": "IANA zone data that zoneinfo reads on images without it"}
_EXTENSION = re.compile(r"\.(cpython-[^.]+|abi3)\.(so|pyd)$|\.(so|pyd)$")


def imports(sources: Iterable[Path] = SOURCES) -> dict[str, set[str]]:
    """Absolute module names imported anywhere in the sources (also inside functions), each
    with the files importing it. `from a.b import c` counts as `a.b.c`: c may be a module."""
    found: dict[str, set[str]] = {}
    for source in sources:
        for path in sorted(source.rglob("*.py")):
            where = str(path.relative_to(ROOT))
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [f"{node.module}.{alias.name}" for alias in node.names]
                else:
                    continue
                for name in names:
                    if name.split(".")[0] not in sys.stdlib_module_names | FIRST_PARTY:
                        found.setdefault(name, set()).add(where)
    return found


def module_owners() -> dict[str, str]:
    """Dotted module name -> the installed distribution whose files hold it. Namespace
    packages (`google`, `google.cloud`) have no file and so no owner: the longest dotted
    prefix that has one decides."""
    owners: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        for file in dist.files or []:
            path = str(file)
            if path.endswith("/__init__.py"):
                module = path.removesuffix("/__init__.py")
            elif path.endswith(".py"):
                module = path.removesuffix(".py")
            elif _EXTENSION.search(path):
                module = _EXTENSION.sub("", path)
            else:
                continue
            if ".." not in module:  # files installed outside site-packages (scripts)
                owners.setdefault(module.replace("/", "."), name)
    return owners


def owner_of(module: str, owners: Mapping[str, str]) -> str | None:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        owner = owners.get(".".join(parts[:end]))
        if owner is not None:
            return owner
    return None


def declared(pyproject: Mapping[str, object]) -> dict[str, Requirement]:
    """The product's requirements by canonical name: dependencies plus product extras."""
    project = pyproject["project"]
    assert isinstance(project, dict)
    texts = list(project["dependencies"])
    for extra, requirements in project.get("optional-dependencies", {}).items():
        if extra in PRODUCT_EXTRAS:
            texts += requirements
    return {canonicalize_name(r.name): r for r in map(Requirement, texts)}


def import_problems(
    pyproject: Mapping[str, object],
    found: Mapping[str, set[str]],
    owners: Mapping[str, str],
) -> list[str]:
    wanted = declared(pyproject)
    undeclared: dict[str, set[str]] = {}  # distribution -> the files importing it
    unknown: dict[str, set[str]] = {}  # module -> files, for modules nothing installed holds
    used: set[str] = set()
    for module, files in found.items():
        owner = owner_of(module, owners)
        if owner is None:
            # Not installed here (an optional extra): its top-level name must be declared.
            owner = canonicalize_name(module.split(".")[0])
            if owner not in wanted:
                unknown.setdefault(module, set()).update(files)
                continue
        used.add(owner)
        if owner not in wanted:
            undeclared.setdefault(owner, set()).update(files)
    problems = [
        f"{name} is imported (by {', '.join(sorted(files))}) but not declared in pyproject.toml"
        for name, files in sorted(undeclared.items())
    ]
    problems += [
        f"{module} (imported by {', '.join(sorted(files))}) is not installed: cannot tell "
        "which package provides it"
        for module, files in sorted(unknown.items())
    ]
    problems += [
        f"{name} is declared in pyproject.toml but nothing imports it"
        for name in sorted(set(wanted) - used - set(RUNTIME_ONLY))
    ]
    return problems


def parse_lock(text: str) -> dict[str, tuple[Requirement, list[str]]]:
    """requirements.lock -> {canonical name: (pinned requirement, its hashes)}."""
    pins: dict[str, tuple[Requirement, list[str]]] = {}
    logical = re.sub(r"\\\n", " ", text)  # join continuation lines
    for raw in logical.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        spec, *options = re.split(r"\s+(?=--)", line)
        hashes = [o.split("=", 1)[1] for o in options if o.startswith("--hash=")]
        requirement = Requirement(spec)
        pins[canonicalize_name(requirement.name)] = (requirement, hashes)
    return pins


def lock_problems(pyproject: Mapping[str, object], lock_text: str) -> list[str]:
    project = pyproject["project"]
    assert isinstance(project, dict)
    try:
        pins = parse_lock(lock_text)
    except InvalidRequirement as exc:
        return [f"requirements.lock does not parse: {exc}"]
    problems: list[str] = []
    for name, (pin, hashes) in sorted(pins.items()):
        exact = [s for s in pin.specifier if s.operator == "=="]
        if len(exact) != 1 or len(pin.specifier) != 1:
            problems.append(f"requirements.lock: {pin} is not pinned with ==")
        if not hashes:
            problems.append(f"requirements.lock: {name} has no --hash")
    for text in project["dependencies"]:
        wanted = Requirement(text)
        name = canonicalize_name(wanted.name)
        if name not in pins:
            problems.append(f"{wanted} is declared in pyproject.toml but not in requirements.lock")
            continue
        pinned = [s.version for s in pins[name][0].specifier if s.operator == "=="]
        try:
            version = Version(pinned[0]) if pinned else None
        except InvalidVersion:
            version = None
        if version is None or not wanted.specifier.contains(version, prereleases=True):
            problems.append(f"requirements.lock pins {pins[name][0]}, outside {wanted}")
    if problems:
        problems.append("regenerate the lock with scripts/lock")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imports", action="store_true", help="check the imports only")
    parser.add_argument("--lock", action="store_true", help="check requirements.lock only")
    args = parser.parse_args()
    both = not args.imports and not args.lock
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    problems: list[str] = []
    if args.imports or both:
        problems += import_problems(pyproject, imports(), module_owners())
    if args.lock or both:
        if LOCK.is_file():
            problems += lock_problems(pyproject, LOCK.read_text())
        else:
            problems.append("requirements.lock is missing: generate it with scripts/lock")
    for problem in problems:
        print(f"dependencies: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
