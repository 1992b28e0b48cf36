"""The intraday DAG, run for real with dag.test() against the sandbox: a user who qualifies this
morning is flagged in HubSpot and routed once, minutes later, with the crossing event as
qualified_at; the next run, with nothing new, writes nothing and makes at most 2 CRM calls."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import requests

from pql import config, connections, crm, events, notify, pipeline
from pql.lake import Lake
from sandbox import seed, server
from sandbox.hubspot import HubSpotStore
from sandbox.mixpanel import DayWriter
from sandbox.world import WorldSpec
from tests.conftest import FAST

pytestmark = pytest.mark.dag
ROOT = Path(__file__).resolve().parents[2]
DAYS = 10
BURST = ["Teammate Invited"] * 3 + ["Integration Connected"] * 2 + ["Pricing Page Viewed"] * 3


def _config(tmp: Path) -> Path:
    text = (ROOT / "config" / "pql.yaml").read_text()
    text = text.replace("root: ../var/lake", f"root: {tmp / 'lake'}")
    text = text.replace("every_minutes: 0 ", "every_minutes: 5 ")
    text = text.replace("crm_task: false", "crm_task: true", 1)
    text = text.replace("slack: false                 # a message to a Slack", "slack: true  #", 1)
    path = tmp / "pql.yaml"
    path.write_text(text)
    return path


def _hubspot_calls(state) -> int:
    counters = requests.get(state.base_url + "/_sandbox/counters", timeout=10).json()
    return sum(v for k, v in counters.items() if k.startswith("hubspot ") and k != "hubspot 429")


def _slack(state) -> list[str]:
    path = state.root / "slack" / "messages.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line)["text"] for line in lines if line.strip()]


def test_a_user_who_qualifies_now_reaches_the_crm_and_routing_in_one_run(tmp_path, airflow_db):
    today = datetime.now(UTC).date()
    yesterday = today - timedelta(days=1)
    start = today - timedelta(days=DAYS)
    with server.running(tmp_path / "sandbox", settings=dict(FAST)) as state:
        seed.build(state, WorldSpec(seed=21, start=start, days=DAYS, users=150, accounts=40))
        saved = dict(os.environ)
        os.environ.update(server.connection_env(state, state.base_url))
        os.environ["PQL_CONFIG"] = str(_config(tmp_path))
        try:
            cfg = config.load()
            # Yesterday's daily runs, as the daily DAGs (tested on their own) leave them.
            session, host = events.session(connections.from_env("mixpanel_default"))
            pipeline.extract_range(cfg, "mixpanel", start, yesterday, session, host)
            adapter = crm.connect(cfg.crm, connections.from_env(cfg.crm.connection_id))
            slack = notify.slack_webhook(connections.from_env(cfg.routing.slack_connection_id))
            pipeline.refresh_accounts(cfg, adapter)
            pipeline.score(cfg, yesterday)
            pipeline.sync(cfg, yesterday, adapter)
            pipeline.route(cfg, yesterday, adapter, slack)
            snap = pd.read_parquet(Lake(cfg.lake.root).scores(yesterday) / "scores.parquet")
            free = tuple(cfg.identity.free_email_domains)
            quiet = snap[~snap["flag"] & snap["email"].notna() & (snap["score"] < 20)
                         & ~snap["email"].str.endswith(free, na=False)]  # fmt: skip
            user = quiet.sort_values("user_key").iloc[0]
            routed_before = len(_slack(state))

            # This morning (a few minutes ago) they invite, connect and look at pricing.
            now = datetime.now(UTC).replace(microsecond=0)
            first = max(
                now - timedelta(minutes=10), datetime.combine(today, datetime.min.time(), UTC)
            )
            moments = [first + timedelta(seconds=10 * k) for k in range(len(BURST))]
            with DayWriter(state, append=True) as w:
                for k, (name, t) in enumerate(zip(BURST, moments, strict=True)):
                    w.write({"event": name, "properties": {
                        "time": int(t.timestamp()), "distinct_id": user["user_key"],
                        "$insert_id": f"fresh-{k}", "$email": user["email"],
                        "mp_processing_time_ms": int(t.timestamp() * 1000) + 2000}})  # fmt: skip

            from airflow.dag_processing.dagbag import DagBag

            bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
            assert bag.import_errors == {}
            dag = bag.dags["pql_fresh"]
            for task in dag.tasks:
                task.retries = 0
            # The deadline alert is declared (its callback is tested on its own); dag.test()
            # in Airflow 3.3.2 cannot finish a run whose DAG holds one that was never
            # serialized (DagRun.update_state looks its ids up in the deadline_alert table).
            assert dag.deadline and dag.deadline[0].interval == timedelta(minutes=30)
            dag.deadline = None
            run = dag.test()
            assert run is not None and run.state == "success", run
        finally:
            os.environ.clear()
            os.environ.update(saved)

        f = cfg.crm.fields
        contact = {
            r["properties"]["email"]: r["properties"] for r in HubSpotStore(state).list("contacts")
        }[user["email"]]
        live = pd.read_parquet(Lake(cfg.lake.root).live() / "scores.parquet").set_index("email")
        row = live.loc[user["email"]] if user["email"] in live.index else "not rescored"
        assert contact[f.flag] == "true", (user.to_dict(), row)
        qualified = pd.Timestamp(contact[f.qualified_at])
        assert qualified.floor("s") in {pd.Timestamp(t).floor("s") for t in moments}
        assert live.loc[user["email"], "qualified_at"] - pd.Timestamp(moments[0]) < timedelta(
            minutes=2
        )
        mentions = [m for m in _slack(state)[routed_before:] if user["email"] in m]
        assert len(mentions) == 1
        assert contact.get(f.reasons)

        # The next run: nothing new; nothing written, at most 2 CRM calls, routed still once.
        os.environ.update(server.connection_env(state, state.base_url))
        os.environ["PQL_CONFIG"] = str(tmp_path / "pql.yaml")
        try:
            before = _hubspot_calls(state)
            run = dag.test()
            assert run is not None and run.state == "success", run
            assert _hubspot_calls(state) - before <= 2
        finally:
            os.environ.clear()
            os.environ.update(saved)
        assert len([m for m in _slack(state)[routed_before:] if user["email"] in m]) == 1
        ti = {t.task_id: t for t in run.get_task_instances()}
        assert ti["lag"].state == "success"
