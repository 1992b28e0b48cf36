#!/usr/bin/env bash
# Everything a newcomer needs, in two commands:
#   ./dev.sh demo   set up (virtualenv, pinned packages, Airflow home with SQLite) and run the demo
#   ./dev.sh test   set up the same way, then lint and run the whole test suite
# and the production topology of docker-compose.yaml without Docker (PostgreSQL, Redis, Airflow's
# components with the CeleryExecutor as local processes, the pipeline through the REST API):
#   ./dev.sh topology [--keep-running]
# Extra arguments go to `pql-sandbox demo`, to pytest or to deploy/topology.py.
# After editing requirements.in or requirements-dev.in, regenerate the lock files with
#   ./dev.sh lock [uv pip compile options, e.g. --upgrade-package NAME]
set -euo pipefail
cd "$(dirname "$0")"

# uv installs the development lock (requirements-dev.txt) and makes the locks; pinned like the rest.
UV_VERSION=0.13.8

python_bin() {
  for p in "${PYTHON:-}" python3.11 python3; do
    if [ -n "$p" ] && command -v "$p" >/dev/null 2>&1 &&
       "$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      echo "$p"; return
    fi
  done
  echo "Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1
}

venv_uv() {
  # .venv's uv (installed with pip at UV_VERSION when missing or another version), run with "$@".
  [ -x .venv/bin/python ] || "$(python_bin)" -m venv .venv
  case "$(.venv/bin/uv --version 2>/dev/null)" in
    "uv $UV_VERSION"|"uv $UV_VERSION "*) ;;
    *) .venv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION" ;;
  esac
  .venv/bin/uv "$@"
}

setup() {
  # The development lock (the production lock + test and sandbox tools), then this project.
  local stamp=.venv/.installed
  if [ -f "$stamp" ] && [ "$stamp" -nt requirements.txt ] && [ "$stamp" -nt requirements-dev.txt ] &&
     [ "$stamp" -nt pyproject.toml ]; then
    return
  fi
  echo "setting up .venv (first run takes about a minute)..."
  "$(python_bin)" -m venv .venv
  if ! venv_uv pip install --quiet --python .venv/bin/python --require-hashes -r requirements-dev.txt
  then
    echo "uv could not install requirements-dev.txt (see above); installing it with pip..." >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
  fi
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
  touch "$stamp"
}

LOCK_NOTE="# Edit the .in file, then run \`./dev.sh lock\` (uv pip compile); never edit this file by hand.
# Every package is pinned, with its hashes, for Python 3.11 on Linux x86_64. Airflow's own
# constraints files cannot be downloaded where we build: these locks take their place.
# A name[extra] line is followed by the same pin without extras, which pip before 23.3
# (Python 3.11.7's) needs in hash-checking mode."

lock() {
  # requirements.in -> requirements.txt (production), requirements-dev.in -> requirements-dev.txt
  # (the same versions plus the dev tools). Versions already locked are kept unless an .in file
  # needs another one or an option says otherwise (--upgrade-package NAME, --upgrade).
  local in out title
  for in in requirements.in requirements-dev.in; do
    out="${in%.in}.txt"
    if [ "$in" = requirements.in ]; then
      title="# Production lock, from requirements.in: what the Airflow image installs (Dockerfile)."
    else
      title="# Development lock, from requirements-dev.in: requirements.txt (the same versions) plus
# the test and sandbox tools. ./dev.sh installs it."
    fi
    venv_uv pip compile --quiet "$in" -o "$out" --python-version 3.11 \
      --python-platform x86_64-manylinux_2_28 --generate-hashes --no-strip-extras --no-header "$@"
    .venv/bin/python - "$out" "$title"$'\n'"$LOCK_NOTE" <<'PY'
import re
import sys

path, header = sys.argv[1:]
out = []
for block in re.split(r"\n(?=\S)", open(path).read().strip("\n")):  # a pin, its hashes, its "via"
    out.append(block)
    if pin := re.match(r"([\w.-]+)\[[^\]]+\](==\S+)", block):
        hashes = [x.strip(" \\") for x in block.splitlines() if x.lstrip().startswith("--hash=")]
        out.append(" \\\n    ".join([pin[1] + pin[2], *hashes]))
open(path, "w").write(header + "\n" + "\n".join(out) + "\n")
PY
  done
  echo "wrote requirements.txt and requirements-dev.txt"
}

browser() {
  # tests/pql/report/test_report_browser.py opens the weekly report in Debian's headless Chromium.
  if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    return
  fi
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "note: Chromium is not installed and this is not root (or not Debian): the report's" \
      "browser test will be skipped (install it with: sudo apt-get install chromium chromium-driver)" >&2
    return
  fi
  echo "installing Debian's chromium and chromium-driver for the report's browser test..."
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }; then
    echo "could not install chromium and chromium-driver with apt-get (see above)" >&2
    exit 1
  fi
}

servers() {
  # deploy/topology.py and tests/deploy run PostgreSQL and Redis as local processes.
  local missing=()
  command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
  if ! command -v initdb >/dev/null 2>&1 && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    missing+=(postgresql)
  fi
  [ ${#missing[@]} -eq 0 ] && return
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "note: ${missing[*]} not installed and this is not root (or not Debian): the local" \
      "topology (tests/deploy) will fail until it is (sudo apt-get install ${missing[*]})" >&2
    return
  fi
  echo "installing Debian's ${missing[*]} for the local production topology..."
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
    echo "could not install ${missing[*]} with apt-get (see above)" >&2
    exit 1
  fi
}

cmd="${1:-}"
shift || true
case "$cmd" in
  demo)
    setup
    exec .venv/bin/pql-sandbox demo "$@" ;;
  test)
    setup
    browser
    servers
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    exec .venv/bin/python -m pytest "$@" ;;
  topology)
    setup
    servers
    exec .venv/bin/python deploy/topology.py "$@" ;;
  lock)
    lock "$@" ;;
  *)
    echo "usage: ./dev.sh demo [pql-sandbox demo options] | ./dev.sh test [pytest options]" \
      "| ./dev.sh topology [--keep-running] | ./dev.sh lock [uv pip compile options]" >&2
    exit 2 ;;
esac
