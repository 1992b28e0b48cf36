"""Alerts for a task that failed for good: the text, stripped of secrets, and its channels.

The Airflow side (pql_airflow.alerts) calls `failure_text` with what the failed task knows and
`send` with the configured channels' senders. Nothing here imports Airflow.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import requests

from pql.config import Alerts
from pql.notify import Email, post_slack

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 400
RUNBOOK = "README.md#runbook"
# A URL's path and query may carry a secret (a Slack webhook's last segment, an api_key=...):
# only its scheme and host are kept. requests also prints the path alone ("with url: /...").
_URL = re.compile(r"\b(https?://[^/\s'\"]+)[/?#][^\s'\")]*")
_BARE_PATH = re.compile(r"(with url: )\S+")


@dataclass(frozen=True)
class Failure:
    """What is known of one failed task try."""

    dag_id: str
    task_id: str
    run_id: str
    try_number: int
    max_tries: int
    error: BaseException | str | None
    log_url: str = ""  # the try's log in the Airflow UI (Airflow's [api] base_url)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` without the given secret values and without any URL's path or query."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return _BARE_PATH.sub(r"\1…", _URL.sub(r"\1/…", text))


def error_line(error: BaseException | str | None, secrets: Iterable[str] = ()) -> str:
    """The error's type and first lines, shortened and scrubbed of secrets."""
    if error is None:
        return "no exception recorded (killed, timed out or marked failed by hand)"
    is_exc = isinstance(error, BaseException)
    text = f"{type(error).__name__}: {error}" if is_exc else str(error)
    text = " ".join(scrub(text, secrets).split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def failure_text(f: Failure, rule: Alerts, secrets: Iterable[str] = ()) -> tuple[str, str]:
    """(subject, body) of the alert: which task, which run, which try, the error, where to look."""
    subject = f"PQL pipeline: {f.dag_id}.{f.task_id} failed"
    lines = [
        f"{subject} (run {f.run_id}, try {f.try_number} of {f.max_tries}).",
        f"Error: {error_line(f.error, secrets)}",
    ]
    if f.log_url:
        lines.append(f"Log: {f.log_url}")
    lines.append(f"What to do: the runbook in {RUNBOOK}")
    return subject, "\n".join(lines)


def send(
    rule: Alerts,
    subject: str,
    body: str,
    *,
    slack: tuple[requests.Session, str] | None = None,
    send_email: Callable[[Email], None] | None = None,
) -> list[str]:
    """Send the alert on every configured channel; returns the channels it reached.

    A channel that fails is logged (without its URL) and the others are still tried: an
    alert must never turn one failure into another.
    """
    reached = []
    if rule.slack and slack is not None:
        try:
            post_slack(*slack, body)
            reached.append("slack")
        except Exception as e:  # reported, never raised
            log.error("alert not posted to Slack: %s", error_line(e))
    if rule.email_to and send_email is not None:
        html = "<pre>" + body.replace("&", "&amp;").replace("<", "&lt;") + "</pre>"
        try:
            send_email(Email(tuple(rule.email_to), subject, html, ()))
            reached.append("email")
        except Exception as e:
            log.error("alert not emailed: %s", error_line(e))
    return reached
