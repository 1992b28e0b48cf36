"""Extract DAGs, one per source in config/pql.yaml: each run exports the previous UTC day."""

from __future__ import annotations

from datetime import UTC, datetime, time

from airflow.sdk import CronDataIntervalTimetable, dag, task

from pql.config import EARLIEST, load
from pql_airflow.assets import CANONICAL_EVENTS
from pql_airflow.defaults import default_args
from pql_airflow.pools import export_pool

CFG = load()


def build(source_name: str, kind: str, schedule: str, conn_id: str):
    @dag(
        dag_id=f"pql_extract_{source_name}",
        description=f"{source_name} export → canonical events in the lake, one UTC day per run",
        schedule=CronDataIntervalTimetable(schedule, timezone="UTC"),
        # Any day can be run (a backfill of history): a day before the source's start_date
        # fails in its task, saying why, instead of being skipped as "success".
        start_date=datetime.combine(EARLIEST, time(), UTC),
        catchup=False,
        max_active_runs=1,
        tags=["pql", "extract"],
        default_args=default_args(retries=3, timeout_hours=2),
    )
    def extract():
        @task(outlets=[CANONICAL_EVENTS], pool=export_pool(kind))
        def export_day(data_interval_end=None, outlet_events=None) -> dict:
            from pql import pipeline
            from pql_airflow.hooks import ExportHook

            day = pipeline.day_before(data_interval_end)
            session, host = ExportHook(conn_id).get_conn()
            result = pipeline.extract(load(), source_name, day, session, host)
            outlet_events[CANONICAL_EVENTS].extra = {"source": source_name, "day": result["last"]}
            return result

        export_day()

    return extract()


for _src in CFG.sources:
    globals()[f"pql_extract_{_src.name}"] = build(
        _src.name, _src.kind, _src.schedule, _src.connection_id
    )
