"""The extract DAG over a network that cuts downloads: exact counts, or a failed run that wrote
nothing (never a success with events missing)."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pandas as pd
import pytest

from pql.lake import Lake
from sandbox import seed
from sandbox.server import connection_env
from sandbox.wire import FaultyProxy
from sandbox.world import WorldSpec

pytestmark = pytest.mark.dag
ROOT = Path(__file__).resolve().parents[2]
START = date.today() - timedelta(days=6)


def test_extract_dag_survives_cuts_and_fails_when_they_persist(sandbox, tmp_path, airflow_db):
    seed.build(sandbox, WorldSpec(seed=11, start=START, days=4, users=150, accounts=40))
    text = (ROOT / "config" / "pql.yaml").read_text()
    text = text.replace("fetch_attempts: 6", "fetch_attempts: 2")
    (tmp_path / "pql.yaml").write_text(text)
    day = START + timedelta(days=2)
    run_at = datetime.combine(day + timedelta(days=1), time(3), UTC)
    saved = dict(os.environ)
    try:
        with FaultyProxy(sandbox.base_url) as proxy:
            os.environ.update(connection_env(sandbox, proxy.url))
            os.environ["PQL_CONFIG"] = str(tmp_path / "pql.yaml")
            from airflow.dag_processing.dagbag import DagBag

            bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
            dag = bag.dags["pql_extract_mixpanel"]
            for task in dag.tasks:
                task.retries = 0

            def run(lake: str):
                os.environ["PQL_LAKE"] = str(tmp_path / lake)
                return dag.test(logical_date=run_at)

            assert run("clean").state == "success"
            proxy.queue("chunked-cut")  # once: fetched again within the task
            assert run("cut").state == "success"
            assert proxy.pending() == 0
            proxy.queue("close-cut", 2)  # as often as fetch_attempts: the task fails
            assert run("failed").state == "failed"
    finally:
        os.environ.clear()
        os.environ.update(saved)
    clean, cut = Lake(tmp_path / "clean"), Lake(tmp_path / "cut")
    for d in (day - timedelta(days=2), day - timedelta(days=1), day):
        a, b = (pd.read_parquet(lake.events("mixpanel", d)) for lake in (clean, cut))
        assert len(a) > 0
        pd.testing.assert_frame_equal(a.sort_values("event_id", ignore_index=True),
                                      b.sort_values("event_id", ignore_index=True))  # fmt: skip
    failed = tmp_path / "failed"
    assert not [p for p in failed.rglob("*") if p.is_file() and "events" in p.parts]
    assert not (failed / "raw").exists() or not any((failed / "raw").rglob("*.gz"))
