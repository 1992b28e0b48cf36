"""Score and sync: on new events, enrich accounts, score users, write changes to the CRM."""

from __future__ import annotations

from datetime import UTC, datetime, time

from airflow.sdk import Param, dag, task

from pql.config import EARLIEST, load
from pql_airflow.assets import CANONICAL_EVENTS, SCORES
from pql_airflow.defaults import default_args
from pql_airflow.pools import CRM

CFG = load()


@dag(
    dag_id="pql_score_sync",
    description="features → score (weighted, threshold or predictive) with reasons → CRM",
    schedule=[CANONICAL_EVENTS],
    start_date=datetime.combine(EARLIEST, time(), UTC),  # config start dates: checked in tasks
    catchup=False,
    max_active_runs=1,
    tags=["pql", "score", "crm"],
    params={
        "day": Param(
            None,
            type=["null", "string"],
            format="date",
            description="Score as of the end of this UTC day (default: newest day extracted)",
        )
    },
    default_args=default_args(),
)
def pql_score_sync():
    @task(pool=CRM)  # reads CRM companies or an enrichment API: shares the CRM budget
    def enrich() -> dict:
        from pql import pipeline
        from pql_airflow.hooks import EnrichmentHook, HubSpotHook, salesforce_login

        cfg = load()
        provider = cfg.enrichment.provider
        hs = None
        if provider == "crm":  # HubSpot companies or Salesforce Accounts
            hs = (
                salesforce_login(cfg.crm.connection_id)()
                if cfg.crm.kind == "salesforce"
                else HubSpotHook(cfg.crm.connection_id).get_conn()
            )
        api = (
            EnrichmentHook(cfg.enrichment.connection_id).session_and_host()
            if provider == "api"
            else None
        )
        return pipeline.refresh_accounts(cfg, hs, api)

    @task(outlets=[SCORES])
    def score(enriched: dict, params=None, triggering_asset_events=None) -> dict:
        from datetime import date

        from pql import pipeline

        cfg = load()
        days = [
            e.extra["day"]
            for events in (triggering_asset_events or {}).values()
            for e in events
            if e.extra and "day" in e.extra
        ]
        if params and params.get("day"):
            day = date.fromisoformat(params["day"])
        elif days:
            day = date.fromisoformat(max(days))
        else:
            day = pipeline.newest_events_day(cfg)
        submit = None
        if cfg.features.engine == "spark" and cfg.features.spark.submit:
            from pql_airflow.spark import submitter  # spark-submit via the Spark provider

            submit = submitter(cfg.features.spark.connection_id)
        return pipeline.score(cfg, day, spark_submit=submit)

    @task(pool=CRM)
    def sync(scored: dict) -> dict:
        from datetime import date

        from pql import pipeline
        from pql_airflow.hooks import HubSpotHook, salesforce_login

        cfg = load()
        day = date.fromisoformat(scored["day"])
        if cfg.crm.kind == "salesforce":
            login = salesforce_login(cfg.crm.connection_id)
            return pipeline.sync(cfg, day, login(), login=login)
        hs = HubSpotHook(cfg.crm.connection_id).get_conn()
        return pipeline.sync(cfg, day, hs)

    @task(pool=CRM)
    def route(scored: dict, synced: dict) -> dict:
        """After the sync, so a newly created contact exists for its follow-up task."""
        from datetime import date

        from pql import pipeline
        from pql_airflow.hooks import HubSpotHook, SlackWebhookHook, salesforce_login

        cfg = load()
        if not (cfg.routing.crm_task or cfg.routing.slack):
            return {"routing": "off"}
        crm = login = None
        if cfg.routing.crm_task and cfg.crm.kind == "salesforce":
            login = salesforce_login(cfg.crm.connection_id)
            crm = login()
        elif cfg.routing.crm_task:
            crm = HubSpotHook(cfg.crm.connection_id).get_conn()
        slack = (
            SlackWebhookHook(cfg.routing.slack_connection_id).session_and_url()
            if cfg.routing.slack
            else None
        )
        return pipeline.route(cfg, date.fromisoformat(scored["day"]), crm, slack, login=login)

    scored = score(enrich())
    route(scored, sync(scored))


pql_score_sync()
