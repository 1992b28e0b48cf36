"""Task defaults shared by the DAGs: retries with exponential backoff and a time limit."""

from __future__ import annotations

from datetime import timedelta


def default_args(retries: int = 2, retry_minutes: int = 2, timeout_hours: int = 1) -> dict:
    return {
        "retries": retries,
        "retry_delay": timedelta(minutes=retry_minutes),
        "retry_exponential_backoff": True,
        "execution_timeout": timedelta(hours=timeout_hours),
    }
