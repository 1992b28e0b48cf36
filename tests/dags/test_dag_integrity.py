"""Every file in dags/ imports cleanly, quickly, and without heavy imports at the top level."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((ROOT / "dags").glob("*.py"))

# Parsed in a fresh interpreter so that nothing imported by other tests hides a heavy import.
PROBE = r"""
import json, sys, time
import airflow.sdk  # the scheduler has this loaded already; not counted against the DAG file
from airflow.dag_processing.dagbag import DagBag
t = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({
    "seconds": time.perf_counter() - t,
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dags": sorted(bag.dag_ids),
    "heavy": sorted(m for m in ("pandas", "duckdb", "hubspot", "simple_salesforce", "pyarrow")
                    if m in sys.modules),
}))
"""


def _parse(path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_dag_folder_imports_without_errors():
    result = _parse(ROOT / "dags")
    assert result["errors"] == {}
    assert set(result["dags"]) == {"pql_extract_mixpanel", "pql_score_sync", "pql_weekly_outcomes"}


def test_each_dag_file_parses_quickly_and_stays_thin():
    for path in DAG_FILES:
        result = _parse(path)
        assert result["errors"] == {}, path.name
        assert result["heavy"] == [], f"{path.name} imports {result['heavy']} at parse time"
        # Airflow's default dagbag_import_timeout is 30 s; a thin DAG file takes well under 1 s.
        assert result["seconds"] < 3, f"{path.name} took {result['seconds']:.2f}s to parse"


def test_tasks_that_call_a_vendor_share_its_pool():
    """Export and CRM tasks run in the pools defined for them (so parallel runs share a budget)."""
    from airflow.dag_processing.dagbag import DagBag

    from pql_airflow import pools

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    defined = set(pools.definitions())
    used = {(d.dag_id, t.task_id): t.pool for d in bag.dags.values() for t in d.tasks}
    assert used == {
        ("pql_extract_mixpanel", "export_day"): "pql_mixpanel_export",
        ("pql_score_sync", "enrich"): "pql_crm_api",
        ("pql_score_sync", "score"): "default_pool",
        ("pql_score_sync", "sync"): "pql_crm_api",
        ("pql_score_sync", "route"): "pql_crm_api",
        ("pql_weekly_outcomes", "report"): "pql_crm_api",
        ("pql_weekly_outcomes", "retrain"): "default_pool",
        ("pql_weekly_outcomes", "deliver"): "pql_notify",  # Slack webhook, SMTP
    }
    assert set(used.values()) - {"default_pool"} <= defined
    # Deployments create them: compose's init service (and deploy/topology.py) run this script.
    compose = (ROOT / "docker-compose.yaml").read_text()
    assert "/opt/pql/deploy/airflow-init.sh" in compose
    init = (ROOT / "deploy" / "airflow-init.sh").read_text()
    assert 'airflow pools import "$root/config/airflow_pools.json"' in init
