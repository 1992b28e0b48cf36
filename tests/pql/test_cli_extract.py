"""`pql extract --from --to` (a backfill) and `pql events stats`, as RevOps runs them."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pandas as pd
from click.testing import CliRunner

from pql import cli
from pql.lake import Lake
from sandbox import seed
from sandbox.server import connection_env
from sandbox.world import WorldSpec

ROOT = Path(__file__).resolve().parents[2]


def test_backfill_and_stats(sandbox, tmp_path, monkeypatch):
    start = date.today() - timedelta(days=12)
    counts = seed.build(sandbox, WorldSpec(seed=4, start=start, days=10, users=120, accounts=30))
    for k, v in connection_env(sandbox, sandbox.base_url).items():
        monkeypatch.setenv(k, v)
    config = tmp_path / "pql.yaml"
    config.write_text(
        (ROOT / "config" / "pql.yaml")
        .read_text()
        .replace("root: ../var/lake", f"root: {tmp_path / 'lake'}")
    )
    runner = CliRunner()
    last = start + timedelta(days=9)
    res = runner.invoke(
        cli.main,
        [
            "extract",
            "--config",
            str(config),
            "--from",
            str(start),
            "--to",
            str(last),
            "--window-days",
            "4",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "(3 export calls)" in res.output
    lake = Lake(tmp_path / "lake")
    total = sum(
        len(pd.read_parquet(lake.events("mixpanel", start + timedelta(days=i)))) for i in range(10)
    )
    assert f"{total:,} canonical" in res.output
    # Everything the world wrote inside the range, less its duplicates, is there exactly once.
    assert total <= counts["events"] - counts["duplicates"]
    by_day = runner.invoke(
        cli.main, ["events", "stats", "--config", str(config)], terminal_width=200
    )
    assert by_day.exit_code == 0 and str(last) in by_day.output
    by_event = runner.invoke(
        cli.main, ["events", "stats", "--config", str(config), "--by", "event"], terminal_width=200
    )
    assert "Signed Up" in by_event.output and "Logged In" in by_event.output


def test_missing_connection_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_MIXPANEL_DEFAULT", raising=False)
    res = CliRunner().invoke(cli.main, ["extract", "--from", "2026-01-01", "--to", "2026-01-02"])
    assert res.exit_code == 1
    assert "export AIRFLOW_CONN_MIXPANEL_DEFAULT" in res.output
