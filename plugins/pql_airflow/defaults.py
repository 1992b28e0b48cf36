"""Task defaults shared by the DAGs: retries with exponential backoff, a time limit, and an
alert (config `alerts`) when a task fails for good."""

from __future__ import annotations

from datetime import timedelta

from pql_airflow.alerts import task_failed


def default_args(retries: int = 2, retry_minutes: int = 2, timeout_hours: int = 1) -> dict:
    return {
        "retries": retries,
        "retry_delay": timedelta(minutes=retry_minutes),
        "retry_exponential_backoff": True,
        "execution_timeout": timedelta(hours=timeout_hours),
        "on_failure_callback": task_failed,
    }
