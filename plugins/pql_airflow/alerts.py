"""The failure callback of every PQL task: an alert on the channels in config `alerts`.

It runs in the task's own process when a try fails for good (no retries left), builds the text
with pql.alerts (task, run, try, the error without secrets or URL paths, the try's log link)
and posts it to the Slack incoming webhook of `alerts.slack_connection_id` and/or emails it
through `alerts.smtp_connection_id`. It never raises: a failed alert is logged, and the task's
own failure stays what Airflow reports.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)

_SECRET_KEY = re.compile(r"secret|token|password|key|passwd", re.IGNORECASE)


def task_failed(context) -> None:
    """on_failure_callback (see plugins/pql_airflow/defaults.py)."""
    try:
        _alert(context)
    except Exception:  # an alert must not add a failure of its own
        log.exception("the PQL failure alert could not be sent")


def _alert(context) -> None:
    from pql import alerts
    from pql.config import load
    from pql_airflow.hooks import SlackWebhookHook, smtp_sender

    cfg = load()
    rule = cfg.alerts
    if not (rule.slack or rule.email_to):
        return
    ti, task = context["ti"], context.get("task")
    failure = alerts.Failure(
        dag_id=ti.dag_id,
        task_id=ti.task_id,
        run_id=ti.run_id,
        try_number=ti.try_number,
        max_tries=(getattr(task, "retries", 0) or 0) + 1,
        error=context.get("exception"),
        log_url=getattr(ti, "log_url", "") or "",
    )
    subject, body = alerts.failure_text(failure, rule, _secrets(cfg))
    slack = None
    if rule.slack:
        try:
            slack = SlackWebhookHook(rule.slack_connection_id).get_conn()
        except Exception as e:
            log.error("alerts.slack: connection %r unusable: %s", rule.slack_connection_id,
                      alerts.error_line(e))  # fmt: skip
    send_email = smtp_sender(rule.smtp_connection_id) if rule.email_to else None
    reached = alerts.send(rule, subject, body, slack=slack, send_email=send_email)
    log.info("failure alert for %s.%s sent to: %s", ti.dag_id, ti.task_id,
             ", ".join(reached) or "no channel")  # fmt: skip


def _secrets(cfg) -> set[str]:
    """Passwords and secret-looking extras of every connection the config names: never quoted
    in an alert, even where an error message repeats one."""
    from airflow.sdk import BaseHook

    ids = {cfg.crm.connection_id, cfg.enrichment.connection_id, cfg.routing.slack_connection_id,
           cfg.outcomes.slack_connection_id, cfg.outcomes.smtp_connection_id,
           cfg.alerts.slack_connection_id, cfg.alerts.smtp_connection_id,
           *(s.connection_id for s in cfg.sources)}  # fmt: skip
    found: set[str] = set()
    for conn_id in ids:
        try:
            conn = BaseHook.get_connection(conn_id)
        except Exception:  # not defined here: nothing of it can be in the error
            continue
        found.add(conn.password or "")
        for key, value in (conn.extra_dejson or {}).items():
            if isinstance(value, str) and _SECRET_KEY.search(key):
                found.add(value)
    return {s for s in found if s}


def run_late(context=None, **kwargs) -> None:
    """Deadline callback of the intraday DAG: its run is still not done after
    freshness.max_lag_minutes; the same channels as a failed task are told."""
    try:
        from pql import alerts
        from pql.config import load
        from pql_airflow.hooks import SlackWebhookHook, smtp_sender

        cfg = load()
        rule = cfg.alerts
        run = (context or {}).get("dag_run")
        run_id = getattr(run, "run_id", None) or (context or {}).get("run_id", "?")
        subject = "PQL pipeline: the intraday run is late"
        body = (
            f"{subject}: run {run_id} of pql_fresh is not done "
            f"{cfg.freshness.max_lag_minutes} minutes after it was queued "
            "(freshness.max_lag_minutes): new PQLs are waiting. What to do: the runbook in "
            f"{alerts.RUNBOOK}"
        )
        log.warning(body)
        if not (rule.slack or rule.email_to):
            return
        slack = SlackWebhookHook(rule.slack_connection_id).get_conn() if rule.slack else None
        send_email = smtp_sender(rule.smtp_connection_id) if rule.email_to else None
        alerts.send(rule, subject, body, slack=slack, send_email=send_email)
    except Exception:  # an alert must not add a failure of its own
        log.exception("the PQL lateness alert could not be sent")
