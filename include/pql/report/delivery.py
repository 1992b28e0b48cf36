"""Delivering the weekly report: an email with the page attached, a Slack summary with a link.

The summary comes from the report's own summary.json (written with the page), so every channel
says what the page says. Each channel sends once per week: a ledger in the lake
(sync/delivery/ledger.parquet, pql.notify.SentOnce) records (week, channel) once done, so a
retried task or a re-run of the DAG never mails the same week twice (force=True sends again).
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import requests

from pql.config import Outcomes
from pql.lake import Lake
from pql.notify import Email, SentOnce, post_slack

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Headline:
    """What a reader sees first: the report's own summary (reports/week=W/summary.json)."""

    week: date
    title: str
    lines: tuple[str, ...]
    pqls: int
    users: int
    rates: dict  # pql_meeting, pql_won, non_pql_meeting, non_pql_won: k, n, rate, low, high, text
    failing: tuple[str, ...] = ()  # health checks that failed
    warning: tuple[str, ...] = ()  # health checks that warned


def headline(report_dir: Path, week: date) -> Headline:
    """Read a written report's summary (reports/week=W/summary.json)."""
    path = report_dir / "summary.json"
    if not path.exists():
        raise FileNotFoundError(f"no report for the week of {week} in {report_dir}: write it first")
    s = json.loads(path.read_text())
    return Headline(
        week=week,
        title=s["title"],
        lines=tuple(s["lines"]),
        pqls=int(s["pqls"]),
        users=int(s["users"]),
        rates=s["rates"],
        failing=tuple(s.get("failing", [])),
        warning=tuple(s.get("warning", [])),
    )


def link(report_url: str, week: date) -> str:
    """The week's page in the Airflow report view (empty when report_url is not configured)."""
    return f"{report_url.rstrip('/')}/{week:%Y-%m-%d}/" if report_url else ""


def subject(h: Headline) -> str:
    return h.title


def lines(h: Headline) -> list[str]:
    """The summary as short sentences, shared by the email and the Slack message."""
    return list(h.lines)


def email_html(h: Headline, url: str) -> str:
    """The email's body: headline numbers and a link; the full page is attached."""
    items = "".join(f"<li>{html.escape(x)}</li>" for x in lines(h))
    see = f'<a href="{html.escape(url)}">Open the report in Airflow</a>; the' if url else "The"
    see += " full report (charts, cohorts, health checks) is attached as HTML, its numbers as CSV."
    return (
        f"<html><body><h2>PQL conversion — week of {h.week}</h2>"
        f'<ul id="headline">{items}</ul><p>{see}</p></body></html>'
    )


def slack_text(h: Headline, url: str) -> str:
    """A Slack mrkdwn message: title, headline numbers, link."""

    def esc(x: str) -> str:  # Slack's control characters
        return x.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    body = "\n".join(f"• {esc(x)}" for x in lines(h))
    more = f"\n<{url}|Open the report>" if url else ""
    return f"*PQL weekly report — week of {h.week}*\n{body}{more}"


def attachments(report_dir: Path, week: date) -> tuple[tuple[str, Path], ...]:
    """The page and its CSV files, named after the week so saved copies do not collide."""
    files = [(f"pql-report-{week}.html", report_dir / "index.html")]
    files += [(f"pql-{week}-{p.name}", p) for p in sorted(report_dir.glob("*.csv"))]
    return tuple(files)


def deliver(
    lake: Lake,
    rule: Outcomes,
    week: date,
    *,
    send_email: Callable[[Email], None] | None = None,
    slack: tuple[requests.Session, str] | None = None,
    now: datetime | None = None,
    force: bool = False,
) -> dict:
    """Send the week's report on the configured channels not yet done; returns what was sent."""
    now = now or datetime.now(UTC)
    report_dir = lake.reports(week)
    h = headline(report_dir, week)
    url = link(rule.report_url, week)
    done = SentOnce(lake, "delivery", ["week"])
    sent_before = (
        {c for c in ("email", "slack") if week.isoformat() in set(done.sent(c)["week"])}
        if not force
        else set()
    )
    got: dict = {"week": week.isoformat(), "email": 0, "slack": 0, "already_sent": []}

    def record(channel: str, detail: str) -> None:  # at once: a later failure keeps this one
        done.record([(week.isoformat(),)], channel, now, detail)

    if rule.email_to:
        if "email" in sent_before:
            got["already_sent"].append("email")
        else:
            if send_email is None:
                raise ValueError("outcomes.email_to is set but no email sender was given")
            mail = Email(tuple(rule.email_to), subject(h), email_html(h, url),
                         attachments(report_dir, week))  # fmt: skip
            send_email(mail)
            got["email"] = len(mail.to)
            record("email", ", ".join(mail.to))
    if rule.slack:
        if "slack" in sent_before:
            got["already_sent"].append("slack")
        else:
            if slack is None:
                raise ValueError(f"outcomes.slack is on but connection "
                                 f"{rule.slack_connection_id!r} gave no webhook URL")  # fmt: skip
            post_slack(*slack, slack_text(h, url))
            got["slack"] = 1
            record("slack", "")
    log.info("report delivery for the week of %s: %s", week, got)
    return got
