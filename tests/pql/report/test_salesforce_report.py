"""End to end on Salesforce: a world seeded into the emulator, its events scored, and
`pql report --week` pulling Events and won Opportunities back: the report's PQL→meeting and
PQL→won figures are the ones the world's truth gives."""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd
from click.testing import CliRunner

from pql import cli, config, pipeline
from pql.lake import Lake
from sandbox import lakegen, seed, world
from sandbox.salesforce import connection_env

DAYS = 49
SPEC = world.WorldSpec(seed=5, start=date.today() - timedelta(days=DAYS + 1), days=DAYS,
                       users=400, accounts=80)  # fmt: skip


def test_report_on_salesforce_matches_the_worlds_truth(sandbox, tmp_path, monkeypatch):
    for name, value in connection_env(sandbox, sandbox.base_url).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PQL_LAKE", raising=False)
    cfg_path = tmp_path / "pql.yaml"
    text = config.DEFAULT_CONFIG.read_text().replace("root: ../var/lake", f"root: {tmp_path}")
    # A 21-day window: the first weeks of this 49-day world are mature by the report's end.
    text = text.replace("attribution_window_days: 90", "attribution_window_days: 21")
    head, _, rest = text.partition("\ncrm:\n")
    tail = rest[rest.index("\nrouting:") :]
    cfg_path.write_text(f"{head}\ncrm:\n  kind: salesforce\n{tail}")
    cfg = config.load(cfg_path)
    lake = Lake(tmp_path)
    lakegen.write(SPEC, lake)  # the product's events (and firmographics) straight into the lake
    end = SPEC.start + timedelta(days=DAYS)
    monday = end - timedelta(days=end.weekday() + 7)
    # Weekly snapshots: a PQL's qualified_at is the first snapshot that flagged it.
    day = monday + timedelta(days=6)
    while day - timedelta(days=7) > SPEC.start:
        day -= timedelta(days=7)
    while day <= monday + timedelta(days=6):
        pipeline.score(cfg, day)
        day += timedelta(days=7)
    seed.crms_only(sandbox, SPEC, ("salesforce",))

    res = CliRunner().invoke(cli.main, ["report", "--config", str(cfg_path),
                                        "--week", str(monday + timedelta(days=2))])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert f"Week of {monday}" in res.output and "CRM pull (full)" in res.output
    totals = pd.read_csv(lake.reports(monday) / "totals.csv").set_index("group")

    # The truth, as Salesforce records it: every meeting (an Event on the Lead or Contact) and
    # every win that happened before the world's end, won on its CloseDate (a date: midnight).
    truth = seed.truth(sandbox)
    until = pd.Timestamp(monday + timedelta(days=7), tz="UTC")
    happened = pd.Timestamp(SPEC.end)
    met = pd.to_datetime(truth["meeting_at"], utc=True)
    won = pd.to_datetime(truth["won_at"], utc=True).dt.floor("D")
    met_at = dict(zip(truth["email"], met.where((met < happened) & (met < until)), strict=True))
    won_at = dict(zip(truth["email"], won.where((won < happened) & (won < until)), strict=True))
    snap = [p for d, p in lake.partitions("scores") if d < monday + timedelta(days=7)][-1]
    users = pd.read_parquet(snap / "scores.parquet").dropna(subset=["email"])
    qualified = pd.to_datetime(users["qualified_at"], utc=True)
    users["qualified_at"] = qualified.where(qualified < until)  # a PQL by the week's end
    start = pd.to_datetime(users["qualified_at"].fillna(users["first_seen"]), utc=True)
    window = pd.Timedelta(days=cfg.outcomes.attribution_window_days)
    assert window == pd.Timedelta(days=21)
    users["mature"] = start + window <= until
    for name, at in (("meetings", met_at), ("won", won_at)):
        t = pd.to_datetime(users["email"].map(at), utc=True)
        users[name] = t.notna() & (t >= start) & (t <= start + window)
    for group, frame in (("PQL", users[users["qualified_at"].notna()]),
                         ("non-PQL", users[users["qualified_at"].isna()])):  # fmt: skip
        row, mature = totals.loc[group], frame[frame["mature"]]
        assert (row["users"], row["mature_users"]) == (len(frame), len(mature))
        assert (row["meetings"], row["won"]) == (mature["meetings"].sum(), mature["won"].sum())
        assert row["meeting_rate"] == mature["meetings"].mean()
        assert row["won_rate"] == mature["won"].mean()
    assert totals.loc["PQL", "meetings"] > 0 and totals.loc["PQL", "won"] > 0

    again = CliRunner().invoke(cli.main, ["report", "--config", str(cfg_path),
                                          "--week", str(monday)])  # fmt: skip
    assert again.exit_code == 0, again.output
    assert "CRM pull (incremental)" in again.output
    pd.testing.assert_frame_equal(
        pd.read_csv(lake.reports(monday) / "totals.csv").set_index("group"), totals
    )
