"""Secrets: the demo's flow through the real DAGs (extract → score → sync to HubSpot and to
Salesforce → weekly report delivered to Slack, plus a task failing and alerting), then every
byte it wrote is searched for every secret the sandbox issued. None may appear.

Searched: the task logs under AIRFLOW_HOME/logs and every log record the run emitted in this
process (dag.test() runs tasks here), every row of every table of Airflow's metadata database
(XComs, run configs, rendered fields), every file of the lake (Parquet read back as values, gzip
unpacked: events, quarantine, scores, sync results and ledgers, reports), the sandbox server's
own log, and what was posted to Slack.

Also here: a task failing in a real dag.test() run posts an alert (task, run, error, runbook)
to the sandbox's Slack through the `alerts` config, and says nothing secret.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import sqlite3
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests

from pql import config
from pql.lake import Lake
from sandbox import amplitude, seed, server, slack
from sandbox.server import connection_env
from sandbox.state import SandboxState
from sandbox.world import WorldSpec
from tests.conftest import FAST

pytestmark = pytest.mark.dag

DAYS = 3
START = date.today() - timedelta(days=DAYS + 1)


class Keep(logging.Handler):
    """Every log record, formatted with its traceback, appended to a file."""

    def __init__(self, path: Path):
        super().__init__(logging.DEBUG)
        self.path = path
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record):
        with self.path.open("a", encoding="utf-8") as f:
            f.write(self.format(record) + "\n")


def _config(path: Path, crm: str) -> Path:
    """The shipped config with every Slack channel on (and the CRM chosen)."""
    text = config.DEFAULT_CONFIG.read_text()
    head, _, rest = text.partition("\ncrm:\n")
    tail = rest[rest.index("\nrouting:") :]
    tail = tail.replace("  slack: false", "  slack: true")  # routing, outcomes and alerts
    crm_body = "  kind: hubspot\n" if crm == "hubspot" else "  kind: salesforce\n"
    path.write_text(f"{head}\ncrm:\n{crm_body}{tail}")
    assert config.load(path).alerts.slack and config.load(path).routing.slack
    return path


def _ok(run):
    assert run is not None and run.state == "success", run


@pytest.fixture(scope="module")
def flow(tmp_path_factory, airflow_db):
    """Runs the flow once; yields (secrets, where things were written, the sandbox state)."""
    tmp = tmp_path_factory.mktemp("secrets")
    root = tmp / "sandbox"
    info = server.start(root)
    keep = Keep(tmp / "records.log")
    logging.getLogger().addHandler(keep)
    saved = dict(os.environ)
    try:
        state = SandboxState.open(root)
        state.base_url, state.salesforce_url = info["base_url"], info["salesforce_url"]
        requests.post(f"{state.base_url}/_sandbox/settings", json=FAST, timeout=10)
        seed.build(state, WorldSpec(seed=5, start=START, days=DAYS, users=200, accounts=50),
                   crms=("hubspot", "salesforce"))  # fmt: skip
        os.environ.update(connection_env(state, state.base_url))
        os.environ["PQL_LAKE"] = str(tmp / "lake")
        hubspot_cfg, salesforce_cfg = (
            _config(tmp / "h.yaml", "hubspot"),
            _config(tmp / "s.yaml", "salesforce"),
        )
        os.environ["PQL_CONFIG"] = str(hubspot_cfg)
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
        assert bag.import_errors == {}
        for dag in bag.dags.values():
            for task in dag.tasks:
                task.retries = 0  # fail at once (the callback runs when no retry is left)
        dags = bag.dags
        # One extract run covers the world's three days (its day and lookback_days before it).
        last = START + timedelta(days=DAYS - 1)
        _ok(dags["pql_extract_mixpanel"].test(logical_date=datetime.combine(
            last + timedelta(days=1), time(3), UTC)))  # fmt: skip
        _ok(dags["pql_score_sync"].test(run_conf={"day": last.isoformat()}))
        monday = last - timedelta(days=last.weekday())
        weekly_at = datetime.combine(monday + timedelta(days=7), time(6), UTC)
        # Slack rate-limits the report's message once: the retry is logged, the URL is not.
        requests.post(f"{state.base_url}/_sandbox/faults", timeout=10,
                      json={"target": "slack", "status": 429, "count": 1})  # fmt: skip
        _ok(dags["pql_weekly_outcomes"].test(logical_date=weekly_at))
        os.environ["PQL_CONFIG"] = str(salesforce_cfg)
        _ok(dags["pql_score_sync"].test(run_conf={"day": last.isoformat()}))
        # A rejected HubSpot token: the first task calling HubSpot fails, and alerts.
        os.environ["PQL_CONFIG"] = str(hubspot_cfg)
        posted_before = len(slack.messages(state))
        requests.post(f"{state.base_url}/_sandbox/faults", timeout=10,
                      json={"target": "hubspot", "status": 401, "count": 100})  # fmt: skip
        failed = dags["pql_score_sync"].test(run_conf={"day": last.isoformat()})
        assert failed.state == "failed"
        alerts = slack.messages(state)[posted_before:]
        yield {
            "secrets": _issued_secrets(state),
            "airflow_home": Path(os.environ["AIRFLOW_HOME"]),
            "lake": Lake(tmp / "lake"),
            "records": tmp / "records.log",
            "server_log": root / "server.log",
            "slack": root / "slack" / "messages.jsonl",
            "alerts": alerts,
        }
    finally:
        logging.getLogger().removeHandler(keep)
        os.environ.clear()
        os.environ.update(saved)
        server.stop(root)


def _issued_secrets(state: SandboxState) -> dict[str, str]:
    """Every secret the sandbox issued: credentials, the webhook's key, Salesforce sessions."""
    c = json.loads((state.root / "credentials.json").read_text())
    found = {
        "mixpanel secret": c["mixpanel"]["secret"],
        "hubspot access token": c["hubspot"]["access_token"],
        "enrichment api key": c["enrichment"]["api_key"],
        "salesforce password": c["salesforce"]["password"],
        "salesforce security token": c["salesforce"]["security_token"],
        "salesforce client secret": c["salesforce"]["client_secret"],
        "amplitude secret key": amplitude.credentials(state)["secret_key"],
        "slack webhook key": slack.webhook_path(state).rsplit("/", 1)[1],
    }
    with sqlite3.connect(state.db_path) as db:
        tokens = [r[0] for r in db.execute("SELECT token FROM salesforce_sessions")]
    assert tokens, "the flow never logged in to Salesforce"
    found.update({f"salesforce session {i}": t for i, t in enumerate(tokens)})
    return found


def _text_of(path: Path) -> str:
    """A file's content as text: Parquet as its values, gzip unpacked, anything else decoded."""
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pandas().astype(str).to_csv()
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def _leaks(texts: dict[str, str], secrets: dict[str, str]) -> list[str]:
    return [f"{what} in {where}" for where, text in texts.items()
            for what, secret in secrets.items() if secret in text]  # fmt: skip


def test_task_logs_and_log_records_hold_no_secret(flow):
    logs = sorted(p for p in (flow["airflow_home"] / "logs").rglob("*") if p.is_file())
    texts = {str(p): _text_of(p) for p in logs}
    texts["log records"] = flow["records"].read_text()
    assert "pql_score_sync" in texts["log records"] or logs, "no log was captured"
    assert not _leaks(texts, flow["secrets"])


def test_airflow_metadata_database_holds_no_secret(flow):
    db = flow["airflow_home"] / "airflow.db"
    texts = {}
    with sqlite3.connect(db) as con:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            rows = con.execute(f'SELECT * FROM "{table}"').fetchall()
            texts[table] = "\n".join(
                " ".join(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                         for v in row)
                for row in rows
            )  # fmt: skip
    assert "xcom" in texts and "pql_score_sync" in texts["xcom"]
    assert not _leaks(texts, flow["secrets"])


def test_lake_and_reports_hold_no_secret(flow):
    files = [p for p in flow["lake"].root.rglob("*") if p.is_file()]
    assert any("reports" in p.parts for p in files) and any("sync" in p.parts for p in files)
    texts = {str(p): _text_of(p) for p in files}
    assert not _leaks(texts, flow["secrets"])


def test_sandbox_log_and_slack_messages_hold_no_secret(flow):
    texts = {"server.log": _text_of(flow["server_log"]), "slack": _text_of(flow["slack"])}
    assert "PQL" in texts["slack"]  # routing and the weekly report posted there
    assert not _leaks(texts, flow["secrets"])


def test_a_failed_task_alerts_on_slack_without_secrets(flow):
    [alert] = [m["text"] for m in flow["alerts"] if "failed" in m["text"]]
    assert "pql_score_sync" in alert and "try 1 of 1" in alert
    assert "README.md#runbook" in alert and "Error: " in alert
    assert "/slack/services" not in alert
    assert not _leaks({"alert": alert}, flow["secrets"])
