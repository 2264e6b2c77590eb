"""Benchmark: two revisions of Talon side by side, `bench/turns.py` run on each in turn, so
the host's drift (5-20% over minutes on this machine) falls on both sides alike. Each run
is one invocation of the revision's own `bench/turns.py` with its own code (a git worktree,
or the working tree for `--candidate .`); the pairs alternate which side goes first. It
prints every run's figures, then per figure each side's mean and in how many pairs the
candidate came out below the base: a change below the noise of one run (PostgreSQL's CPU
per turn moves by ~0.03 ms from run to run) shows only that way.

    .venv/bin/python bench/ab.py HEAD~1 --pairs 5
    .venv/bin/python bench/ab.py main --candidate . --pairs 5 -- --clients 1 --turns 2000

Arguments after `--` go to `bench/turns.py` (default: 16 clients, 3,000 turns, `--stream
post`). The figures: turns/s; the CPU per turn of the gateway, the worker and PostgreSQL;
PostgreSQL's CPU per turn by the process its connections serve.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUN = ["--clients", "16", "--turns", "3000", "--stream", "post"]


def figures(result: dict[str, Any]) -> dict[str, float]:
    """What one run of `bench/turns.py` says, by the names this benchmark prints."""
    cpu = result["cpu_ms_per_turn"]
    by_client = result.get("postgres_cpu_ms_per_turn_by_client", {})
    named = {
        "turns/s": result["turns_per_second"],
        "cpu gateway": cpu.get("gateway"),
        "cpu worker": cpu.get("worker"),
        "cpu postgres": cpu.get("postgres"),
        "pg gateway: the rest": by_client.get("gateway: the rest"),
        "pg worker: the rest": by_client.get("worker: the rest"),
        "pg listening": _sum(
            by_client.get("gateway: listening"), by_client.get("worker: listening")
        ),
        "first event p50": result["first_event_ms"]["p50"],
    }
    return {name: float(value) for name, value in named.items() if value is not None}


def _sum(*values: float | None) -> float | None:
    present = [v for v in values if v is not None]
    return round(sum(present), 3) if present else None


def run(tree: Path, turns_args: list[str]) -> dict[str, float]:
    """One run of `tree`'s `bench/turns.py` with `tree`'s code, in this interpreter."""
    env = {**os.environ, "PYTHONPATH": str(tree / "shared")}
    done = subprocess.run(
        [sys.executable, "bench/turns.py", *turns_args],
        cwd=tree, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"bench/turns.py failed in {tree}:\n{done.stderr[-2000:]}")
    return figures(json.loads(done.stdout))


def summary(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """Per figure: each side's mean and how many pairs had the candidate lower."""
    out: dict[str, dict[str, Any]] = {}
    for name in runs["base"][0]:
        base = [r[name] for r in runs["base"] if name in r]
        candidate = [r[name] for r in runs["candidate"] if name in r]
        pairs = list(zip(base, candidate, strict=False))
        out[name] = {
            "base": round(statistics.fmean(base), 3),
            "candidate": round(statistics.fmean(candidate), 3),
            "candidate below base in": f"{sum(c < b for b, c in pairs)} of {len(pairs)} pairs",
        }
    return out


def worktree(revision: str, into: Path) -> Path:
    made = subprocess.run(["git", "worktree", "add", "--detach", str(into), revision],
                          cwd=ROOT, capture_output=True, text=True, check=False)  # fmt: skip
    if made.returncode != 0:
        raise SystemExit(f"bench/ab.py: no worktree of {revision!r}: {made.stderr.strip()}")
    return into


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="the revision measured against (a commit, branch, tag)")
    parser.add_argument(
        "--candidate", default="HEAD", help="the revision measured, or . for the working tree"
    )
    parser.add_argument("--pairs", type=int, default=5)
    args, rest = parser.parse_known_args()
    turns_args = [a for a in rest if a != "--"] or DEFAULT_RUN
    scratch = Path(tempfile.mkdtemp(prefix="talon-ab-"))
    made: list[Path] = []
    try:
        made.append(worktree(args.base, scratch / "base"))
        if args.candidate == ".":
            trees = {"base": made[0], "candidate": ROOT}
        else:
            made.append(worktree(args.candidate, scratch / "candidate"))
            trees = {"base": made[0], "candidate": made[1]}
        runs: dict[str, list[dict[str, float]]] = {"base": [], "candidate": []}
        for pair in range(args.pairs):
            order = ["base", "candidate"] if pair % 2 == 0 else ["candidate", "base"]
            for side in order:
                measured = run(trees[side], turns_args)
                runs[side].append(measured)
                print(json.dumps({"pair": pair + 1, "side": side, **measured}), flush=True)
        print(json.dumps({"base": args.base, "candidate": args.candidate,
                          "turns.py": turns_args, "summary": summary(runs)}, indent=1))  # fmt: skip
    finally:
        for tree in made:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)],
                           cwd=ROOT, check=False, capture_output=True)  # fmt: skip
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
