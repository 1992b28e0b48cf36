#!/usr/bin/env bash
# One-off initialisation of an Airflow deployment of the PQL pipeline, run before the other
# components start: docker compose's airflow-init service, and deploy/topology.py (the same
# topology without Docker) both run this file.
#   1. create or upgrade the metadata database schema;
#   2. create the pools that keep parallel tasks inside each vendor's rate limits;
#   3. give the simple auth manager's `admin` the password from AIRFLOW_ADMIN_PASSWORD (when set;
#      otherwise the api-server generates one and prints it in its log).
set -euo pipefail
root="${PQL_HOME:-$(cd "$(dirname "$0")/.." && pwd)}"

airflow db migrate
airflow pools import "$root/config/airflow_pools.json"

if [ -n "${AIRFLOW_ADMIN_PASSWORD:-}" ]; then
  python - <<'EOF'
import json, os
from pathlib import Path

path = Path(os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
passwords = json.loads(path.read_text() or "{}") if path.exists() else {}
passwords["admin"] = os.environ["AIRFLOW_ADMIN_PASSWORD"]
path.parent.mkdir(parents=True, exist_ok=True)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as f:
    json.dump(passwords, f)
print(f"admin password set in {path}")
EOF
fi
