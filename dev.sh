#!/usr/bin/env bash
# Everything a newcomer needs, in two commands:
#   ./dev.sh demo   set up (virtualenv, pinned packages, Airflow home with SQLite) and run the demo
#   ./dev.sh test   set up the same way, then lint and run the whole test suite
# Extra arguments go to `pql demo` or to pytest.
set -euo pipefail
cd "$(dirname "$0")"

python_bin() {
  for p in "${PYTHON:-}" python3.11 python3; do
    if [ -n "$p" ] && command -v "$p" >/dev/null 2>&1 &&
       "$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      echo "$p"; return
    fi
  done
  echo "Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1
}

setup() {
  local stamp=.venv/.installed
  if [ -f "$stamp" ] && [ "$stamp" -nt requirements.txt ] && [ "$stamp" -nt pyproject.toml ]; then
    return
  fi
  echo "setting up .venv (first run takes about a minute)..."
  "$(python_bin)" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
  touch "$stamp"
}

cmd="${1:-}"
shift || true
case "$cmd" in
  demo)
    setup
    exec .venv/bin/pql demo "$@" ;;
  test)
    setup
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    exec .venv/bin/python -m pytest "$@" ;;
  *)
    echo "usage: ./dev.sh demo [pql demo options] | ./dev.sh test [pytest options]" >&2
    exit 2 ;;
esac
