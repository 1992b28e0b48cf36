"""Speed to lead: every freshness.every_minutes, new events → touched users rescored → new PQLs
and un-flags in the CRM → routing. Only defined when config `freshness` is on (README)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, task
from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference, SyncCallback

from pql.config import load
from pql_airflow.defaults import default_args
from pql_airflow.pools import CRM, export_pool

CFG = load()


def build(every: int, max_lag: int, sources: list[tuple[str, str, str]]):
    @dag(
        dag_id="pql_fresh",
        description="intraday: new events → touched users rescored → CRM flags and routing",
        schedule=timedelta(minutes=every),
        start_date=datetime(2026, 1, 1, tzinfo=UTC),
        catchup=False,  # a missed run is not made up: the next one brings everything since
        max_active_runs=1,  # runs never pile up or overlap each other
        tags=["pql", "freshness"],
        # Short retries: the next run comes in minutes anyway.
        default_args=default_args(retries=1, retry_minutes=1, timeout_hours=1),
        # A run still not done this long after it was queued is late: alert (as a failure).
        deadline=DeadlineAlert(
            reference=DeadlineReference.DAGRUN_QUEUED_AT,
            interval=timedelta(minutes=max_lag),
            callback=SyncCallback("pql_airflow.alerts.run_late"),
        ),
    )
    def pql_fresh():
        files = []
        for name, kind, conn_id in sources:
            # The daily extract of the same source shares the pool: they never overlap.
            @task(task_id=f"extract_{name}", pool=export_pool(kind))
            def extract(name=name, conn_id=conn_id) -> dict:
                from pql import pipeline
                from pql_airflow.hooks import ExportHook

                session, host = ExportHook(conn_id).get_conn()
                return pipeline.extract_fresh(load(), name, session, host)

            files.append(extract())

        @task
        def rescore(extracted: list[dict]) -> dict:
            from pql import pipeline

            paths = [f for e in extracted for f in e["files"]]
            return pipeline.rescore_fresh(load(), paths)

        @task(pool=CRM)
        def sync(scored: dict) -> dict:
            from pql import pipeline
            from pql_airflow.hooks import CrmHook

            cfg = load()
            return pipeline.sync_fresh(cfg, CrmHook(cfg).get_conn())

        @task(pool=CRM)
        def route(synced: dict) -> dict:
            """After the sync, so a newly created contact exists for its follow-up task."""
            from pql import pipeline
            from pql_airflow.hooks import routing_clients

            cfg = load()
            clients = routing_clients(cfg)
            if clients is None:
                return {"routing": "off"}
            return pipeline.route_fresh(cfg, *clients)

        @task(trigger_rule="all_done", retries=0)
        def lag() -> dict:
            """Whatever the run's other tasks did: fails (and alerts) when a source is behind."""
            from pql import pipeline

            return pipeline.freshness_lag(load())

        routed = route(sync(rescore(files)))
        routed >> lag()

    return pql_fresh()


if CFG.freshness.enabled:
    pql_fresh = build(
        CFG.freshness.every_minutes,
        CFG.freshness.max_lag_minutes,
        [(s.name, s.kind, s.connection_id) for s in CFG.intraday_sources()],
    )
