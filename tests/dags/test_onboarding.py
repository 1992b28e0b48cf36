"""Bring your own product: from another product's export to a validated PQL definition.

A world whose events have other names than the demo's ("Dashboard Built", "Member Invited", ...)
and dates before 2026 goes through what README "Bring your own product" says, with no hand edit:
pql extract, pql validate --lake (the misspelled event and the dead feature are reported with the
names that do occur), pql init (usage-based, then outcome-based once the weekly report pulled CRM
outcomes), pql score, pql report, pql backtest, and the DAGs on days of 2025.
"""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from pql import cli
from pql.lake import Lake
from sandbox import seed
from sandbox.server import connection_env
from sandbox.world import WorldSpec

ROOT = Path(__file__).resolve().parents[2]
START = date(2025, 9, 1)
DAYS = 35
OTHER_NAMES = (
    ("Core Feature Used", "Dashboard Built"),
    ("Teammate Invited", "Member Invited"),
    ("Project Created", "Workspace Created"),
    ("Integration Connected", "Data Source Connected"),
    ("Usage Limit Hit", "Seat Limit Reached"),
    ("Pricing Page Viewed", "Plans Viewed"),
    ("Report Exported", "Chart Shared"),
)


def _run(*args: str) -> str:
    res = CliRunner().invoke(cli.main, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture
def product(sandbox, tmp_path, monkeypatch):
    """The sandbox holding the other product's world, its connections in the environment, and
    the shipped config pointed at a fresh lake (its demo event names left as they are)."""
    spec = WorldSpec(seed=31, start=START, days=DAYS, users=500, accounts=100,
                     event_names=OTHER_NAMES)  # fmt: skip
    seed.build(sandbox, spec)
    for k, v in connection_env(sandbox, sandbox.base_url).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("PQL_LAKE", raising=False)
    text = (ROOT / "config" / "pql.yaml").read_text()
    config = tmp_path / "pql.yaml"
    config.write_text(text.replace("root: ../var/lake", f"root: {tmp_path / 'lake'}"))
    monkeypatch.setenv("PQL_CONFIG", str(config))
    return config, Lake(tmp_path / "lake")


pytestmark = pytest.mark.dag


def test_from_another_products_export_to_a_validated_definition(
    product, tmp_path, airflow_db, monkeypatch
):
    config, lake = product
    last = START + timedelta(days=DAYS - 1)
    out = _run("extract", "--config", str(config), "--from", str(START), "--to", str(last))
    assert "canonical" in out and "profile emails:" in out

    # The shipped config names the demo's events: each is reported with the nearest real name.
    res = CliRunner().invoke(cli.main, ["validate", "--lake", "--config", str(config)])
    assert res.exit_code == 1
    assert "features.events[0] 'Core Feature Used': never seen" in res.output
    assert "did you mean" in res.output

    # A misspelled event and a property the event never carries (a dead feature).
    doc = yaml.safe_load(config.read_text())
    doc["features"]["events"] = ["Dashboard built", "Member Invited", "Data Source Connected"]
    doc["features"]["distinct"] = [{"name": "sources", "event": "Data Source Connected",
                                    "property": "connector"}]  # fmt: skip
    signal = {"kind": "event", "event": "Member Invited", "window_days": 14, "points_each": 10}
    doc["model"] = {"kind": "weighted", "version": "mine-1", "threshold": 40, "signals": [signal]}
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump(doc, sort_keys=False))
    res = CliRunner().invoke(cli.main, ["validate", "--lake", "--config", str(typo)])
    assert res.exit_code == 1, res.output
    assert "'Dashboard built': never seen" in res.output
    assert "did you mean 'Dashboard Built' (" in res.output
    assert "property 'connector'" in res.output and "'integration' (" in res.output
    assert "feature 'sources_7d' is 0 for all" in res.output
    assert "feature 'dashboard_built_7d' is 0 for all" in res.output

    # No outcomes yet: a proposal from usage alone, valid against the data as written.
    first = tmp_path / "first.yaml"
    out = _run("init", "--config", str(config), "--out", str(first))
    assert "no CRM outcomes yet" in out and f"written: {first}" in out
    assert any(f"* {name}" in out for _, name in OTHER_NAMES)  # the product's own events
    assert "Core Feature Used" not in yaml.safe_load(first.read_text())["features"]["events"]
    out = _run("validate", "--lake", "--config", str(first))
    assert "every name the config uses occurs in the events" in out

    # Score as the DAG does (no CRM call), then the weekly report pulls the CRM's outcomes.
    out = _run("score", "--config", str(first), "--day", str(last))
    assert "flagged" in out and "new PQLs" in out
    assert (lake.scores(last) / "scores.parquet").exists()
    monday = last - timedelta(days=last.weekday())
    week = monday - timedelta(days=7)
    for d in (week + timedelta(days=6),):
        _run("score", "--config", str(first), "--day", str(d))
    out = _run("report", "--config", str(first), "--week", str(week))
    assert f"Week of {week}" in out

    # With outcomes: converters' events rank first, the threshold lands in the 5-15% band.
    proposed = tmp_path / "proposed.yaml"
    out = _run("init", "--config", str(first), "--out", str(proposed), "--target", "meeting")
    assert "outcomes-based" in out and "ratio" in out and "backtest verdict:" in out
    cfg = yaml.safe_load(proposed.read_text())
    assert cfg["model"]["kind"] == "weighted" and cfg["model"]["signals"]
    share = float(out.split("flags ")[1].split("%")[0]) / 100
    assert 0.02 <= share <= 0.15, out
    out = _run("backtest", "--config", str(proposed), "--from", str(START + timedelta(days=7)),
               "--to", str(last), "--every", "7")  # fmt: skip
    assert "verdict:" in out

    # The DAGs on days of 2025: they run their tasks (no start date before 2026 skips them).
    monkeypatch.setenv("PQL_CONFIG", str(proposed))
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    assert bag.import_errors == {}
    for dag in bag.dags.values():
        for task in dag.tasks:
            task.retries = 0
    run = bag.dags["pql_extract_mixpanel"].test(
        logical_date=datetime.combine(last + timedelta(days=1), time(3), UTC)
    )
    assert run.state == "success"
    assert len(pd.read_parquet(lake.events("mixpanel", last))) > 0
    run = bag.dags["pql_score_sync"].test(run_conf={"day": str(last)})
    assert run.state == "success"

    # A day before the configured start fails loudly, never "success" with nothing done.
    cfg["sources"][0]["start_date"] = str(START + timedelta(days=10))
    late = tmp_path / "late.yaml"
    late.write_text(yaml.safe_dump(cfg, sort_keys=False))
    monkeypatch.setenv("PQL_CONFIG", str(late))
    run = bag.dags["pql_extract_mixpanel"].test(
        logical_date=datetime.combine(START + timedelta(days=3), time(3), UTC)
    )
    assert run.state == "failed"
