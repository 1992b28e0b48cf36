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
        from pql_airflow.hooks import CrmHook, EnrichmentHook

        cfg = load()
        provider = cfg.enrichment.provider
        crm = CrmHook(cfg).get_conn() if provider == "crm" else None  # companies / Accounts
        api = EnrichmentHook(cfg.enrichment.connection_id).get_conn() if provider == "api" else None
        return pipeline.refresh_accounts(cfg, crm, api)

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
        from pql_airflow.hooks import CrmHook

        cfg = load()
        return pipeline.sync(cfg, date.fromisoformat(scored["day"]), CrmHook(cfg).get_conn())

    @task(pool=CRM)
    def route(scored: dict, synced: dict) -> dict:
        """After the sync, so a newly created contact exists for its follow-up task."""
        from datetime import date

        from pql import pipeline
        from pql_airflow.hooks import routing_clients

        cfg = load()
        clients = routing_clients(cfg)
        if clients is None:
            return {"routing": "off"}
        return pipeline.route(cfg, date.fromisoformat(scored["day"]), *clients)

    scored = score(enrich())
    route(scored, sync(scored))


pql_score_sync()
