#!/usr/bin/env bash
# Everything a newcomer needs, in two commands:
#   ./dev.sh demo   set up (virtualenv, pinned packages, Airflow home with SQLite) and run the demo
#   ./dev.sh test   set up the same way, then lint and run the whole test suite
# and the production topology of docker-compose.yaml without Docker (PostgreSQL, Redis, Airflow's
# components with the CeleryExecutor as local processes, the pipeline through the REST API):
#   ./dev.sh topology [--keep-running]
# Extra arguments go to `pql demo`, to pytest or to deploy/topology.py.
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

browser() {
  # tests/pql/test_report_browser.py opens the weekly report in Debian's headless Chromium.
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
    exec .venv/bin/pql demo "$@" ;;
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
  *)
    echo "usage: ./dev.sh demo [pql demo options] | ./dev.sh test [pytest options]" \
      "| ./dev.sh topology [--keep-running]" >&2
    exit 2 ;;
esac
