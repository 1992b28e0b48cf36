"""Run the real DAGs with dag.test() over a simulated period (used by `pql-sandbox demo`).

Run as `python -m pql_airflow.demo --start D --days N --summary FILE` with AIRFLOW_HOME, the
AIRFLOW_CONN_* variables, PQL_CONFIG and PQL_LAKE already set by the caller.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path


def _dags(folder: Path) -> dict:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(folder))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    # Fail fast: production retries would make dag.test() wait minutes on an error.
    for dag in bag.dags.values():
        for task in dag.tasks:
            task.retries = 0
    return bag.dags


def _run(dag, **kwargs) -> None:
    run = dag.test(**kwargs)
    if run is None or str(run.state) not in ("success", "DagRunState.SUCCESS"):
        state = None if run is None else run.state
        raise RuntimeError(f"{dag.dag_id} {kwargs} ended {state}: see the task log above")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--start", type=date.fromisoformat, required=True)
    parser.add_argument("--days", type=int, required=True)
    parser.add_argument("--summary", type=Path, required=True)
    args = parser.parse_args()
    # Progress goes to the caller on the original stdout; Airflow logs to stdout, so point
    # file descriptor 1 at stderr (the caller's log file) before Airflow is imported.
    progress = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    logging.basicConfig(level=logging.INFO)

    from airflow.utils.db import resetdb

    from pql_airflow import pools

    resetdb()
    pools.ensure()
    dags = _dags(Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]))
    extract, score = dags["pql_extract_mixpanel"], dags["pql_score_sync"]
    t0 = time.monotonic()
    for i in range(args.days):
        day = args.start + timedelta(days=i)
        # A manual run covers the whole interval that ends at its logical date.
        _run(extract, logical_date=datetime.combine(day + timedelta(days=1), dtime(3), UTC))
        _run(score, run_conf={"day": day.isoformat()})
        print(
            f"{i + 1} day {i + 1}/{args.days} {day}: extracted, scored, synced "
            f"({time.monotonic() - t0:.0f}s)",
            file=progress,
        )
    end = args.start + timedelta(days=args.days)
    last_monday = end - timedelta(days=end.weekday() + 7)
    report_run = datetime.combine(last_monday + timedelta(days=7), dtime(6), UTC)
    _run(dags["pql_weekly_outcomes"], logical_date=report_run)
    print(f"{args.days + 1} weekly report for the week of {last_monday}", file=progress)
    args.summary.write_text(
        json.dumps({"week": last_monday.isoformat(), "seconds": round(time.monotonic() - t0, 1)})
    )


if __name__ == "__main__":
    sys.exit(main())
