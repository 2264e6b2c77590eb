# Shared setup for scripts/dev and scripts/test: a virtualenv with Talon installed and a
# PostgreSQL server binary on the machine. Sourced, not run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

pick_python() {
  for candidate in python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "Talon needs Python 3.11 or newer on PATH" >&2
  return 1
}

# ensure_venv EXTRAS: create .venv and (re)install Talon when pyproject.toml changed.
ensure_venv() {
  local extras="$1" stamp="$VENV/.talon-install" want
  if [ ! -x "$VENV/bin/python" ]; then
    "$(pick_python)" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
  fi
  want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) $extras"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[$extras]"
    echo "$want" > "$stamp"
  fi
}

have_postgres() {
  command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

# PostgreSQL from Debian packages when missing (as root); otherwise the bundled pgserver wheel.
ensure_postgres() {
  have_postgres && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing PostgreSQL from Debian packages" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  have_postgres || "$VENV/bin/python" -m pip install --quiet "pgserver>=0.1.4"
}

# The Pub/Sub tests need the gcloud emulator (Java + gcloud's pubsub-emulator component).
ensure_pubsub_emulator() {
  if ! command -v java >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless >/dev/null
  fi
  if ! command -v gcloud >/dev/null 2>&1; then
    echo "the tests need gcloud with the Pub/Sub emulator component (gcloud components install" \
      "pubsub-emulator, or apt package google-cloud-cli-pubsub-emulator)" >&2
    return 1
  fi
}

# The Cloud Tasks tests need PyPI's gcloud-tasks-emulator. It pins protobuf<5, which clashes
# with Talon's Google clients, so it lives in a virtualenv of its own.
TASKS_EMULATOR_VENV="$ROOT/.venv-tasks-emulator"
ensure_tasks_emulator() {
  if [ ! -x "$TASKS_EMULATOR_VENV/bin/gcloud-tasks-emulator" ]; then
    "$(pick_python)" -m venv "$TASKS_EMULATOR_VENV"
    "$TASKS_EMULATOR_VENV/bin/python" -m pip install --quiet --upgrade pip
    "$TASKS_EMULATOR_VENV/bin/python" -m pip install --quiet "gcloud-tasks-emulator==0.6.2"
  fi
}

# The dashboard (shared/ui): `npm ci` when the lockfile changed, `npm run build` when anything
# the build reads changed. Both are skipped by a hash check when nothing did, so this costs a
# few milliseconds on every run. The stamps live in node_modules, which `npm ci` replaces.
UI="$ROOT/shared/ui"
ui_sources_hash() {
  (cd "$UI" && find index.html package.json package-lock.json tsconfig.json vite.config.ts \
      src public -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}
ensure_ui() {
  local lock_hash sources_hash
  lock_hash="$(sha256sum "$UI/package-lock.json" | cut -d' ' -f1)"
  sources_hash="$(ui_sources_hash)"
  if [ "$(cat "$UI/node_modules/.talon-build" 2>/dev/null)" = "$sources_hash" ] &&
     [ -f "$UI/dist/index.html" ]; then
    return 0
  fi
  if ! command -v npm >/dev/null 2>&1; then
    echo "building the dashboard (shared/ui) needs Node.js 20.19+ and npm on PATH" >&2
    return 1
  fi
  if [ "$(cat "$UI/node_modules/.talon-ci" 2>/dev/null)" != "$lock_hash" ]; then
    echo "installing the dashboard's packages (npm ci)" >&2
    (cd "$UI" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    echo "$lock_hash" > "$UI/node_modules/.talon-ci"
  fi
  echo "building the dashboard (npm run build)" >&2
  (cd "$UI" && npm run build --silent >/dev/null)
  echo "$sources_hash" > "$UI/node_modules/.talon-build"
}

# The browser tests drive Debian's Chromium (Playwright's own browser downloads cannot be
# reached here); install it when missing and we may.
ensure_chromium() {
  command -v chromium >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Chromium from Debian packages" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
  command -v chromium >/dev/null 2>&1 || {
    echo "the browser tests need Chromium (apt-get install chromium)" >&2
    return 1
  }
}
