"""The intraday runs say when they fall behind: a source whose newest intraday fetch is older
than freshness.max_lag_minutes fails the lag check, naming it and the bound."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pql import config, pipeline
from pql.events.canonical import intraday_state_path
from pql.lake import Lake

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)


def _cfg(tmp_path) -> config.Config:
    base = config.load(ROOT / "config" / "pql.yaml")
    return base.model_copy(update={"lake": config.LakeSettings(root=tmp_path),
                                   "freshness": config.Freshness(every_minutes=5)})  # fmt: skip


def _fetched(lake: Lake, minutes_ago: float) -> None:
    path = intraday_state_path(lake, "mixpanel")
    path.parent.mkdir(parents=True, exist_ok=True)
    at = NOW - timedelta(minutes=minutes_ago)
    path.write_text(json.dumps({"watermark_ms": 1, "fetched_at": at.isoformat()}))


def test_lag_within_the_bound_passes_and_beyond_it_fails_naming_the_source(tmp_path):
    cfg = _cfg(tmp_path)
    assert pipeline.freshness_lag(cfg, now=NOW)["lag_minutes"] == {
        "mixpanel": "no intraday run yet"
    }
    _fetched(Lake(tmp_path), 6)
    assert pipeline.freshness_lag(cfg, now=NOW) == {
        "lag_minutes": {"mixpanel": 6.0}, "max_lag_minutes": 30}  # fmt: skip
    _fetched(Lake(tmp_path), 45)
    with pytest.raises(pipeline.FreshnessLag) as err:
        pipeline.freshness_lag(cfg, now=NOW)
    assert "mixpanel last brought data 45 minutes ago" in str(err.value)
    assert "freshness.max_lag_minutes is 30" in str(err.value)


def test_the_late_run_alert_reaches_slack(tmp_path, sandbox, monkeypatch):
    """The DAG's deadline callback: the same channels as a failed task's alert."""
    from pql_airflow import alerts
    from sandbox.server import connection_env

    text = (ROOT / "config" / "pql.yaml").read_text()
    text = text.replace(
        "slack: false                 # a message (task, run, error", "slack: true  #"
    )
    (tmp_path / "pql.yaml").write_text(text)
    monkeypatch.setenv("PQL_CONFIG", str(tmp_path / "pql.yaml"))
    for key, value in connection_env(sandbox, sandbox.base_url).items():
        monkeypatch.setenv(key, value)
    alerts.run_late({"run_id": "scheduled__2026-11-18T12:00"})
    posted = (sandbox.root / "slack" / "messages.jsonl").read_text()
    assert "the intraday run is late" in posted and "scheduled__2026-11-18T12:00" in posted
