"""Weekly outcomes: meetings, won deals and sales tasks from the CRM (only what changed since
the last run) → PQL→meeting and PQL→won report."""

from __future__ import annotations

from datetime import UTC, datetime, time

from airflow.sdk import CronDataIntervalTimetable, dag, task

from pql.config import EARLIEST, load
from pql_airflow.defaults import default_args
from pql_airflow.pools import CRM, NOTIFY

CFG = load()


@dag(
    dag_id="pql_weekly_outcomes",
    description="CRM meetings + won deals joined to PQL history → conversion report (HTML + CSV)",
    schedule=CronDataIntervalTimetable(CFG.outcomes.schedule, timezone="UTC"),
    start_date=datetime.combine(EARLIEST, time(), UTC),  # config start dates: checked in tasks
    catchup=False,
    max_active_runs=1,
    tags=["pql", "report"],
    default_args=default_args(retry_minutes=5),
)
def pql_weekly_outcomes():
    @task(pool=CRM)
    def report(data_interval_end=None) -> dict:
        """Pull what the CRM changed since the last run, then report the week before."""
        from pql import pipeline
        from pql.report import outcomes
        from pql_airflow.hooks import CrmHook

        cfg = load()
        week = outcomes.week_start(pipeline.day_before(data_interval_end))
        return pipeline.weekly_report(cfg, week, CrmHook(cfg).get_conn())

    @task
    def retrain(reported: dict) -> dict:
        """Closing the loop: the outcomes just pulled become labels for a candidate model."""
        from datetime import date, timedelta

        from pql import pipeline

        week = date.fromisoformat(reported["week"])
        return pipeline.retrain(load(), week + timedelta(days=6))

    @task(pool=NOTIFY)
    def deliver(reported: dict) -> dict:
        """The report by email and/or a Slack summary, as configured in outcomes (once a week)."""
        from datetime import date

        from pql.lake import Lake
        from pql.report import delivery
        from pql_airflow.hooks import SlackWebhookHook, smtp_sender

        cfg = load()
        rule = cfg.outcomes
        send_email = smtp_sender(rule.smtp_connection_id) if rule.email_to else None
        slack = SlackWebhookHook(rule.slack_connection_id).get_conn() if rule.slack else None
        week = date.fromisoformat(reported["week"])
        return delivery.deliver(Lake(cfg.lake.root), rule, week, send_email=send_email, slack=slack)

    reported = report()
    retrain(reported)
    deliver(reported)


pql_weekly_outcomes()
