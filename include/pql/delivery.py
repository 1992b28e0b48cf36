"""Delivering the weekly report: an email with the page attached, a Slack summary with a link.

The headline numbers come from the CSV files the report kept (totals.csv, health.csv), so every
channel says what the page says. Each channel sends once per week: a ledger in the lake
(sync/delivery/ledger.parquet) records (week, channel) once done, so a retried task or a re-run
of the DAG never mails the same week twice (force=True sends again).
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import requests

from pql.config import Outcomes
from pql.lake import Lake, atomic_dir

log = logging.getLogger(__name__)

LEDGER_COLUMNS = ["week", "channel", "done_at", "detail"]


@dataclass(frozen=True)
class Headline:
    """The numbers a reader sees first, from the report's own CSV files."""

    week: date
    signups: int
    pqls: int
    pql_meetings: int
    pql_won: int
    pql_meeting_rate: float | None
    pql_won_rate: float | None
    other_meeting_rate: float | None
    other_won_rate: float | None
    failing: tuple[str, ...] = ()  # health checks that failed
    warning: tuple[str, ...] = ()  # health checks that warned


@dataclass(frozen=True)
class Email:
    to: tuple[str, ...]
    subject: str
    html: str
    attachments: tuple[tuple[str, Path], ...]  # (file name in the email, file in the lake)


def headline(report_dir: Path, week: date) -> Headline:
    """Read a written report's headline numbers (reports/week=W/totals.csv and health.csv)."""
    if not (report_dir / "totals.csv").exists():
        raise FileNotFoundError(f"no report for the week of {week} in {report_dir}: write it first")
    totals = pd.read_csv(report_dir / "totals.csv").set_index("group")

    def get(group: str, col: str):
        if group not in totals.index or pd.isna(totals.loc[group, col]):
            return None
        v = totals.loc[group, col]
        return float(v) if col.endswith("_rate") else int(v)

    checks = (
        pd.read_csv(report_dir / "health.csv")
        if (report_dir / "health.csv").exists()
        else pd.DataFrame(columns=["check", "status"])
    )
    return Headline(
        week=week,
        signups=int(totals["users"].sum()),
        pqls=get("PQL", "users") or 0,
        pql_meetings=get("PQL", "meetings") or 0,
        pql_won=get("PQL", "won") or 0,
        pql_meeting_rate=get("PQL", "meeting_rate"),
        pql_won_rate=get("PQL", "won_rate"),
        other_meeting_rate=get("non-PQL", "meeting_rate"),
        other_won_rate=get("non-PQL", "won_rate"),
        failing=tuple(checks.loc[checks["status"] == "fail", "check"]),
        warning=tuple(checks.loc[checks["status"] == "warn", "check"]),
    )


def pct(v: float | None) -> str:
    """A share as the report prints it: 12.3%, or n/a."""
    return "n/a" if v is None else f"{100 * v:.1f}%"


def link(report_url: str, week: date) -> str:
    """The week's page in the Airflow report view (empty when report_url is not configured)."""
    return f"{report_url.rstrip('/')}/{week:%Y-%m-%d}/" if report_url else ""


def subject(h: Headline) -> str:
    health = f" — {len(h.failing)} health check(s) failing" if h.failing else ""
    return (
        f"PQL weekly report, week of {h.week}: PQL→meeting {pct(h.pql_meeting_rate)}, "
        f"PQL→won {pct(h.pql_won_rate)}{health}"
    )


def lines(h: Headline) -> list[str]:
    """The headline numbers as short sentences, shared by the email and the Slack message."""
    out = [
        f"{h.pqls:,} PQLs of {h.signups:,} sign-ups: {h.pql_meetings:,} meetings, "
        f"{h.pql_won:,} won",
        f"PQL→meeting {pct(h.pql_meeting_rate)} (non-PQL {pct(h.other_meeting_rate)})",
        f"PQL→won {pct(h.pql_won_rate)} (non-PQL {pct(h.other_won_rate)})",
    ]
    if h.failing or h.warning:
        out.append(
            "Health checks: "
            + "; ".join([f"FAIL {c}" for c in h.failing] + [f"warn {c}" for c in h.warning])
        )
    else:
        out.append("Health checks: all pass")
    return out


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


def ledger(lake: Lake) -> pd.DataFrame:
    path = lake.sync("delivery") / "ledger.parquet"
    return pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=LEDGER_COLUMNS)


def post_slack(session: requests.Session, url: str, text: str) -> None:
    """One message to a Slack incoming webhook (rate limits and 5xx retried with backoff)."""
    from pql.events.transport import send

    resp = send(session, "POST", url, attempts=4, json={"text": text}, timeout=30, secret_url=True)
    if resp.status_code != 200:
        raise RuntimeError(f"Slack webhook answered {resp.status_code}: {resp.text[:200]}")


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
    done = ledger(lake)
    sent_before = set(done.loc[done["week"] == week.isoformat(), "channel"]) if not force else set()
    got: dict = {"week": week.isoformat(), "email": 0, "slack": 0, "already_sent": []}

    def record(channel: str, detail: str) -> None:  # at once: a later failure keeps this one
        nonlocal done
        row = pd.DataFrame([(week.isoformat(), channel, now, detail)], columns=LEDGER_COLUMNS)
        done = pd.concat([done, row], ignore_index=True) if len(done) else row
        with atomic_dir(lake.sync("delivery")) as tmp:
            done.to_parquet(tmp / "ledger.parquet", index=False)

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
