"""Routing newly qualified leads: a follow-up task for the owner in the CRM, a Slack message.

Each channel acts at most once per lead per qualification: a ledger in the lake records
(email, qualified_at, channel) once done, and a lead only qualifies once (qualified_at is kept).
The CRM task goes to the configured CRM through its adapter (create_tasks).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pandas as pd
import requests

from pql import notify
from pql.config import Routing
from pql.crm import Crm
from pql.http import Budget
from pql.lake import Lake
from pql.notify import SentOnce

log = logging.getLogger(__name__)

SLACK_LEADS_PER_MESSAGE = 20


def ledger(lake: Lake) -> SentOnce:
    """What routing already did: (email, qualified_at) per channel."""
    return SentOnce(lake, "routing", ["email", "qualified_at"])


def pending(scores: pd.DataFrame, done: SentOnce, channel: str) -> pd.DataFrame:
    """Flagged leads with an email whose current qualification was not routed on `channel`."""
    q = scores[
        scores["flag"].astype(bool) & scores["email"].notna() & scores["qualified_at"].notna()
    ]
    q = q.assign(qualified_at=pd.to_datetime(q["qualified_at"], utc=True))
    seen = done.sent(channel)
    keys = set(zip(seen["email"], pd.to_datetime(seen["qualified_at"], utc=True), strict=True))
    mask = [(e, t) not in keys for e, t in zip(q["email"], q["qualified_at"], strict=True)]
    return q[mask]


def route(
    lake: Lake,
    rule: Routing,
    scores: pd.DataFrame,
    *,
    crm: Crm | None = None,
    slack: tuple[requests.Session, str] | None = None,
    now: datetime | None = None,
) -> dict:
    """Create the configured follow-ups for newly qualified leads; returns counts per channel.

    `crm` is the configured CRM's adapter (pql.crm.connect); `slack` a (session, webhook URL).
    """
    now = now or datetime.now(UTC)
    done = ledger(lake)
    counts: dict = {}
    made: list[tuple] = []  # (email, qualified_at, detail) per task, filled as each batch lands
    posted: list[tuple] = []  # (email, qualified_at) per lead, filled as each message is sent
    try:
        if rule.crm_task:
            if crm is None:
                raise ValueError("routing.crm_task is on but no CRM client was given")
            todo = pending(scores, done, "crm_task")
            crm.create_tasks(todo, rule, now, made)
            counts["crm_tasks"] = len(made)
        if rule.slack:
            if slack is None:
                raise ValueError(f"routing.slack is on but connection {rule.slack_connection_id!r} "
                                 "gave no webhook URL")  # fmt: skip
            todo = pending(scores, done, "slack")
            post_slack(*slack, todo, posted=posted)
            counts["slack_leads"] = len(posted)
    finally:
        # Also when a later batch, message or channel fails: what was done is not done twice
        # by the retry.
        for e, q, d in made:
            done.record([(e, q)], "crm_task", now, d)
        done.record(posted, "slack", now)
    log.info("routing: %s", counts or "off")
    return counts


def post_slack(
    session: requests.Session, url: str, todo: pd.DataFrame, *, posted: list | None = None
) -> list[tuple]:
    """Post the leads to a Slack incoming webhook, 20 per message, at most one message a second.

    Returns (email, qualified_at) per lead posted, also appended to `posted` message by message.
    """
    budget = Budget([(1, 1.0)])
    posted = [] if posted is None else posted
    rows = list(todo.itertuples())
    for start in range(0, len(rows), SLACK_LEADS_PER_MESSAGE):
        chunk = rows[start : start + SLACK_LEADS_PER_MESSAGE]
        lines = [f"• {r.email} — score {r.score}: {r.reasons}" for r in chunk]
        budget.acquire()
        notify.post_slack(session, url, f"{len(chunk)} new product-qualified lead(s):\n"
                          + "\n".join(lines))  # fmt: skip
        posted += [(r.email, r.qualified_at) for r in chunk]
    return posted
