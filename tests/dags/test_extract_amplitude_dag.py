"""An Amplitude source in config gets its own extract DAG, which runs end to end."""

from __future__ import annotations

import gzip
import os
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pandas as pd
import pytest

from pql.lake import Lake
from sandbox import amplitude, seed, server
from sandbox.server import connection_env
from sandbox.world import WorldSpec
from tests.conftest import FAST

pytestmark = pytest.mark.dag
ROOT = Path(__file__).resolve().parents[2]
START = date.today() - timedelta(days=8)

AMPLITUDE = """
  - name: amplitude
    kind: amplitude
    connection_id: amplitude_default
    lookback_days: 1
"""


def test_amplitude_extract_dag(tmp_path, airflow_db):
    text = (ROOT / "config" / "pql.yaml").read_text()
    text = text.replace("root: ../var/lake", f"root: {tmp_path / 'lake'}")
    text = text.replace("\nidentity:", AMPLITUDE + "\nidentity:", 1)
    (tmp_path / "pql.yaml").write_text(text)
    with server.running(tmp_path / "sandbox", settings=dict(FAST)) as state:
        seed.build(
            state,
            WorldSpec(seed=8, start=START, days=6, users=150, accounts=40),
            sources=("amplitude",),
        )
        saved = dict(os.environ)
        os.environ.update(connection_env(state, state.base_url))
        os.environ["PQL_CONFIG"] = str(tmp_path / "pql.yaml")
        try:
            from airflow.dag_processing.dagbag import DagBag

            bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
            assert bag.import_errors == {}
            assert {"pql_extract_mixpanel", "pql_extract_amplitude"} <= set(bag.dag_ids)
            dag = bag.dags["pql_extract_amplitude"]
            for task in dag.tasks:
                task.retries = 0
            for i in range(1, 6):
                run_at = datetime.combine(START + timedelta(days=i + 1), time(4), UTC)
                run = dag.test(logical_date=run_at)
                assert run.state == "success"
        finally:
            os.environ.clear()
            os.environ.update(saved)
        lake = Lake(tmp_path / "lake")
        stored = 0
        for hour, path in amplitude.stored_hours(state).items():
            if START + timedelta(days=1) <= hour.date() <= START + timedelta(days=5):
                with gzip.open(path, "rt") as f:
                    stored += sum(1 for line in f if line.strip())
        kept = sum(
            len(pd.read_parquet(lake.events("amplitude", START + timedelta(days=i))))
            for i in range(1, 6)
        )
        assert 0 < stored - kept < stored * 0.02  # only the sent-twice events were dropped
