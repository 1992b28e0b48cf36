"""The three DAGs, run for real with dag.test() against the sandbox and a small synthetic world."""

from __future__ import annotations

import gzip
import json
import os
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pandas as pd
import pytest

from pql.lake import Lake
from sandbox import seed, server
from sandbox.hubspot import HubSpotStore
from sandbox.mixpanel import event_file
from sandbox.server import connection_env
from sandbox.world import WorldSpec
from tests.conftest import FAST

pytestmark = pytest.mark.dag

DAYS = 28
START = date.today() - timedelta(days=DAYS + 1)
WINDOW = 14  # days: the weekly report's attribution window in these tests


@pytest.fixture(scope="module")
def env(tmp_path_factory, airflow_db):
    """A seeded sandbox, connections and lake in the environment, a fresh Airflow DB, the DAGs."""
    tmp = tmp_path_factory.mktemp("e2e")
    with server.running(tmp / "sandbox", settings=dict(FAST)) as state:
        seed.build(state, WorldSpec(seed=99, start=START, days=DAYS, users=600, accounts=120),
                   crms=("hubspot", "salesforce"))  # fmt: skip
        saved = dict(os.environ)
        os.environ.update(connection_env(state, state.base_url))
        os.environ["PQL_LAKE"] = str(tmp / "lake")
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
        assert bag.import_errors == {}
        # Fail fast: production retries would make dag.test() wait minutes on an error.
        for dag in bag.dags.values():
            for task in dag.tasks:
                task.retries = 0
        try:
            yield state, Lake(tmp / "lake"), bag.dags
        finally:
            os.environ.clear()
            os.environ.update(saved)


def _ok(run):
    assert run is not None and run.state == "success", run


def _contacts(state) -> pd.DataFrame:
    rows = HubSpotStore(state).list("contacts")
    return pd.DataFrame([{"id": r["id"], **r["properties"]} for r in rows])


def test_extract_dag_writes_the_day(env):
    state, lake, dags = env
    for i in range(DAYS):
        day = START + timedelta(days=i)
        # A manual run covers the whole interval that ends at its logical date.
        run_at = datetime.combine(day + timedelta(days=1), time(3), UTC)
        _ok(dags["pql_extract_mixpanel"].test(logical_date=run_at))
        events = pd.read_parquet(lake.events("mixpanel", day))
        assert len(events) > 0
        assert (events["ts"].dt.date == day).all()
    raw = kept = 0
    for i in range(DAYS):
        day = START + timedelta(days=i)
        with gzip.open(event_file(state, day), "rt") as f:
            raw += sum(1 for line in f if line.strip())
        kept += len(pd.read_parquet(lake.events("mixpanel", day)))
    assert 0 < raw - kept < raw * 0.02  # only the injected duplicates were dropped


def test_score_sync_dag_writes_scores_flags_reasons_into_hubspot(env):
    state, lake, dags = env
    for i in range(7, DAYS):
        _ok(dags["pql_score_sync"].test(run_conf={"day": (START + timedelta(days=i)).isoformat()}))
    last = START + timedelta(days=DAYS - 1)
    scores = pd.read_parquet(lake.scores(last) / "scores.parquet")
    crm = _contacts(state).dropna(subset=["pql_score"]).set_index("email")
    expected = scores.dropna(subset=["email"]).set_index("email")
    assert set(expected.index) <= set(crm.index)  # every scored user with an email is in the CRM
    joined = expected.join(crm, suffixes=("", "_crm"))
    assert (joined["score"].astype(str) == joined["pql_score"]).all()
    assert (joined["flag"].map({True: "true", False: "false"}) == joined["pql_flag"]).all()
    # An empty value clears a HubSpot property, so users with no reasons read back as unset.
    assert (joined["reasons"] == joined["pql_reasons"].fillna("")).all()
    assert (joined["pql_model_version"] == scores["model_version"].iloc[0]).all()
    pqls = joined[joined["flag"]]
    assert len(pqls) > 0
    assert pqls["pql_qualified_at"].str.match(r"^\d{4}-\d\d-\d\dT").all()
    assert pqls["pql_reasons"].str.len().gt(10).all()
    # First qualification is kept: it is never later than the day of the latest snapshot.
    assert (
        pd.to_datetime(pqls["pql_qualified_at"])
        <= pd.Timestamp(last, tz="UTC") + pd.Timedelta(days=1)
    ).all()


def test_unchanged_rerun_writes_nothing(env):
    state, lake, dags = env
    last = START + timedelta(days=DAYS - 1)
    before = _contacts(state).set_index("id")["lastmodifieddate"]
    _ok(dags["pql_score_sync"].test(run_conf={"day": last.isoformat()}))
    runs = sorted((lake.sync("hubspot")).glob("run=*"))
    latest = pd.read_parquet(runs[-1] / "results.parquet")
    assert latest.empty
    after = _contacts(state).set_index("id")["lastmodifieddate"]
    pd.testing.assert_series_equal(before, after)


def _short_window(tmp_path, monkeypatch, crm: str = "hubspot") -> Path:
    """The shipped config with a 14-day attribution window (so this 4-week world has mature
    users to rate), for the DAG's tasks and the CLI alike."""
    from pql import config

    text = config.DEFAULT_CONFIG.read_text()
    text = text.replace("attribution_window_days: 90", f"attribution_window_days: {WINDOW}")
    if crm != "hubspot":
        head, _, rest = text.partition("\ncrm:\n")
        text = f"{head}\ncrm:\n  kind: {crm}\n{rest[rest.index(chr(10) + 'routing:') :]}"
    path = tmp_path / "pql.yaml"
    path.write_text(text)
    monkeypatch.setenv("PQL_CONFIG", str(path))
    return path


def _truth_rates(users: pd.DataFrame, met: dict, won: dict, until: pd.Timestamp) -> pd.DataFrame:
    """The report's definitions, computed independently: PQL by the week's end, start, window,
    maturity, and the first meeting / win inside the window."""
    users = users.copy()
    qualified = pd.to_datetime(users["qualified_at"], utc=True)
    users["is_pql"] = qualified < until
    users["start"] = qualified.where(users["is_pql"], pd.to_datetime(users["first_seen"], utc=True))
    users = users[users["start"] < until]
    window = pd.Timedelta(days=WINDOW)
    users["mature"] = users["start"] + window <= until
    for name, sink in (("meetings", met), ("won", won)):
        t = pd.to_datetime(users["email"].map(sink), utc=True)
        users[name] = t.notna() & (t >= users["start"]) & (t <= users["start"] + window)
    return users


def _assert_totals(totals: pd.DataFrame, users: pd.DataFrame) -> None:
    for group, frame in (("PQL", users[users["is_pql"]]), ("non-PQL", users[~users["is_pql"]])):
        row, mature = totals.loc[group], frame[frame["mature"]]
        assert (row["users"], row["mature_users"]) == (len(frame), len(mature)), group
        assert (row["meetings"], row["won"]) == (mature["meetings"].sum(), mature["won"].sum())
        assert row["won_rate"] == mature["won"].mean() and len(mature) > 0


def test_weekly_dag_reports_rates_that_match_the_crm(env, tmp_path, monkeypatch):
    state, lake, dags = env
    _short_window(tmp_path, monkeypatch)
    end = START + timedelta(days=DAYS)
    monday = end - timedelta(days=end.weekday() + 7)
    run_at = datetime.combine(monday + timedelta(days=7), time(6), UTC)
    _ok(dags["pql_weekly_outcomes"].test(logical_date=run_at))
    report = lake.reports(monday)
    html = (report / "index.html").read_text()
    cohorts = pd.read_csv(report / "cohorts.csv")
    totals = pd.read_csv(report / "totals.csv").set_index("group")
    assert "PQL conversion" in html and 'id="summary"' in html
    assert 'id="health"' in html and 'id="chart-won_by_cohort"' in html
    assert (report / "chart_won_by_cohort.csv").exists()

    # Recompute independently: the CRM's held meetings (not cancelled, not no-shows) and won
    # deals, by contact email, against the scores.
    store = HubSpotStore(state)
    emails = {r["id"]: r["properties"]["email"] for r in store.list("contacts")}
    until = pd.Timestamp(monday + timedelta(days=7), tz="UTC")
    met, won, unheld = {}, {}, 0
    for kind, prop, sink in (("meetings", "hs_timestamp", met), ("deals", "closedate", won)):
        for r in store.list(kind):
            if kind == "deals" and r["properties"]["dealstage"] != "closedwon":
                continue
            if kind == "meetings" and r["properties"]["hs_meeting_outcome"] != "COMPLETED":
                unheld += 1
                continue
            t = pd.Timestamp(r["properties"][prop])
            if t >= until:
                continue
            for a in store.associations(kind, r["id"], "contacts"):
                e = emails[a["to_id"]]
                sink[e] = min(sink.get(e, t), t)
    assert unheld > 0  # the world has cancelled and no-show meetings, and they do not count
    snap = [p for d, p in lake.partitions("scores") if d < monday + timedelta(days=7)][-1]
    users = _truth_rates(pd.read_parquet(snap / "scores.parquet").dropna(subset=["email"]),
                         met, won, until)  # fmt: skip
    _assert_totals(totals, users)
    assert users[users["is_pql"] & users["mature"]]["meetings"].sum() > 0
    assert cohorts["users"].sum() == len(users)
    assert set(cohorts["group"]) == {"PQL", "non-PQL"}
    assert (cohorts["mature_users"] > 0).any() and (cohorts["mature_users"] == 0).any()
    summary = json.loads((report / "summary.json").read_text())
    assert summary["rates"]["pql_won"]["k"] == totals.loc["PQL", "won"]


def test_report_cli_writes_the_same_report_as_the_dag(env, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from pql import cli

    state, lake, dags = env
    _short_window(tmp_path, monkeypatch)
    end = START + timedelta(days=DAYS)
    monday = end - timedelta(days=end.weekday() + 7)
    dag_totals = pd.read_csv(lake.reports(monday) / "totals.csv")
    res = CliRunner().invoke(cli.main, ["report", "--week", str(monday + timedelta(days=3))])
    assert res.exit_code == 0, res.output
    assert f"Week of {monday}" in res.output and "index.html" in res.output
    pd.testing.assert_frame_equal(pd.read_csv(lake.reports(monday) / "totals.csv"), dag_totals)


def test_weekly_dag_on_salesforce_reports_the_worlds_truth(env, tmp_path, monkeypatch):
    """The same DAG with crm.kind salesforce: Events and won Opportunities through the
    provider's hook, rates as the world's truth gives them (wins on their CloseDate)."""
    state, lake, dags = env
    _short_window(tmp_path, monkeypatch, crm="salesforce")
    end = START + timedelta(days=DAYS)
    monday = end - timedelta(days=end.weekday() + 7)
    run_at = datetime.combine(monday + timedelta(days=7), time(7), UTC)
    _ok(dags["pql_weekly_outcomes"].test(logical_date=run_at))
    totals = pd.read_csv(lake.reports(monday) / "totals.csv").set_index("group")
    assert (lake.outcome_store("salesforce") / "state.json").exists()

    truth = seed.truth(state)
    until = pd.Timestamp(monday + timedelta(days=7), tz="UTC")
    met = pd.to_datetime(truth["meeting_at"], utc=True)
    won = pd.to_datetime(truth["won_at"], utc=True).dt.floor("D")  # CloseDate is a date
    real = pd.Timestamp(datetime.combine(end, time(0), UTC))  # what happened by the world's end
    met_at = dict(zip(truth["email"], met.where((met < real) & (met < until)), strict=True))
    won_at = dict(zip(truth["email"], won.where((won < real) & (won < until)), strict=True))
    met_at = {e: t for e, t in met_at.items() if pd.notna(t)}
    won_at = {e: t for e, t in won_at.items() if pd.notna(t)}
    snap = [p for d, p in lake.partitions("scores") if d < monday + timedelta(days=7)][-1]
    users = _truth_rates(pd.read_parquet(snap / "scores.parquet").dropna(subset=["email"]),
                         met_at, won_at, until)  # fmt: skip
    _assert_totals(totals, users)
