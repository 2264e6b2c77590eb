"""Package each Cloud Run function for deployment: its `main.py` at the root of a zip,
beside a copy of the core package (`talon/`), the skills, and a `requirements.txt`, which is
what the Python buildpack installs: requirements.lock (every package pinned, with hashes; see
scripts/lock) under `--require-hashes`, so a deployment installs exactly the files locked.
The gateway also carries the built dashboard as `ui/dist` (served at /ui/; `talon/api/ui.py`
finds it there), so build it first: `./scripts/test` or `./scripts/dev` do, or
`npm ci && npm run build` in shared/ui (cloudbuild.yaml's `ui` step).

    python scripts/package_functions.py [--out dist/functions]
    gsutil cp dist/functions/*.zip gs://BUCKET/VERSION/   (cloudbuild.yaml does this)
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = ("gateway", "dispatch", "scheduler", "ops_mcp")
LOCK = ROOT / "requirements.lock"
UI_DIST = ROOT / "shared" / "ui" / "dist"


def requirements() -> str:
    # pip would turn hash checking on by itself when it sees a hash; saying so makes an entry
    # without one an error instead of an unchecked download.
    return "--require-hashes\n" + LOCK.read_text()


def package(name: str, out: Path) -> Path:
    target = out / f"{name}.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(ROOT / "functions" / name / "main.py", "main.py")
        archive.writestr("requirements.txt", requirements())
        folders = [(ROOT / "shared" / "talon", "talon"), (ROOT / "skills", "skills")]
        if name == "gateway":
            folders.append((UI_DIST, "ui/dist"))
        for folder, prefix in folders:
            for path in sorted(folder.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    archive.write(path, f"{prefix}/{path.relative_to(folder)}")
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "dist" / "functions"))
    args = parser.parse_args()
    if not LOCK.is_file():
        parser.error("requirements.lock is missing: generate it with scripts/lock")
    if not (UI_DIST / "index.html").is_file():
        parser.error(
            f"the dashboard is not built ({UI_DIST} is missing): run `npm ci && npm run build` "
            "in shared/ui"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in FUNCTIONS:
        print(package(name, out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
