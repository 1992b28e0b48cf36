"""Routing newly qualified leads: a follow-up task for the owner in the CRM, a Slack message.

Each channel acts at most once per lead per qualification: a ledger in the lake records
(email, qualified_at, channel) once done, and a lead only qualifies once (qualified_at is kept).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pandas as pd
import requests

from pql.config import Routing
from pql.lake import Lake, atomic_dir
from pql.ratelimit import Budget

log = logging.getLogger(__name__)

LEDGER_COLUMNS = ["email", "qualified_at", "channel", "done_at", "detail"]
SLACK_LEADS_PER_MESSAGE = 20


def ledger(lake: Lake) -> pd.DataFrame:
    path = lake.sync("routing") / "ledger.parquet"
    return pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=LEDGER_COLUMNS)


def pending(scores: pd.DataFrame, done: pd.DataFrame, channel: str) -> pd.DataFrame:
    """Flagged leads with an email whose current qualification was not routed on `channel`."""
    q = scores[
        scores["flag"].astype(bool) & scores["email"].notna() & scores["qualified_at"].notna()
    ]
    q = q.assign(qualified_at=pd.to_datetime(q["qualified_at"], utc=True))
    seen = done[done["channel"] == channel]
    keys = set(zip(seen["email"], pd.to_datetime(seen["qualified_at"], utc=True), strict=True))
    mask = [(e, t) not in keys for e, t in zip(q["email"], q["qualified_at"], strict=True)]
    return q[mask]


def route(
    lake: Lake,
    rule: Routing,
    scores: pd.DataFrame,
    *,
    hs=None,
    slack: tuple[requests.Session, str] | None = None,
    now: datetime | None = None,
) -> dict:
    """Create the configured follow-ups for newly qualified leads; returns counts per channel."""
    now = now or datetime.now(UTC)
    done = ledger(lake)
    counts, new_rows = {}, []
    if rule.crm_task:
        if hs is None:
            raise ValueError("routing.crm_task is on but no CRM client was given")
        todo = pending(scores, done, "crm_task")
        made = hubspot_tasks(hs, todo, rule, now)
        new_rows += [(e, q, "crm_task", now, d) for e, q, d in made]
        counts["crm_tasks"] = len(made)
    if rule.slack:
        if slack is None:
            raise ValueError(f"routing.slack is on but connection {rule.slack_connection_id!r} "
                             "gave no webhook URL")  # fmt: skip
        todo = pending(scores, done, "slack")
        posted = post_slack(*slack, todo)
        new_rows += [(e, q, "slack", now, "") for e, q in posted]
        counts["slack_leads"] = len(posted)
    if new_rows:
        fresh = pd.DataFrame(new_rows, columns=LEDGER_COLUMNS)
        with atomic_dir(lake.sync("routing")) as tmp:
            pd.concat([done, fresh], ignore_index=True).to_parquet(
                tmp / "ledger.parquet", index=False
            )
    log.info("routing: %s", counts or "off")
    return counts


def hubspot_tasks(hs, todo: pd.DataFrame, rule: Routing, now: datetime) -> list[tuple]:
    """One HubSpot task per lead, assigned to the contact's owner and associated with it."""
    from hubspot.crm.objects.tasks import (
        AssociationSpec,
        BatchInputSimplePublicObjectBatchInputForCreate,
        PublicAssociationsForObject,
        PublicObjectId,
        SimplePublicObjectBatchInputForCreate,
    )

    from pql.crm.hubspot import BATCH, limited, read_contacts

    if todo.empty:
        return []
    held = read_contacts(hs, list(todo["email"]), ["hs_object_id", "hubspot_owner_id"])
    due = (now + timedelta(hours=rule.task_due_hours)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    made, inputs = [], []
    for r in todo.itertuples():
        contact = held.get(r.email, {})
        if not contact.get("hs_object_id"):
            continue  # not in the CRM yet (the sync creates it): routed on a later run
        props = {
            "hs_task_subject": rule.task_subject.format(email=r.email, score=r.score),
            "hs_task_body": f"PQL score {r.score}: {r.reasons}",
            "hs_timestamp": due,
            "hs_task_status": "NOT_STARTED",
            "hs_task_priority": "HIGH",
        }
        if contact.get("hubspot_owner_id"):
            props["hubspot_owner_id"] = contact["hubspot_owner_id"]
        link = PublicAssociationsForObject(
            to=PublicObjectId(id=contact["hs_object_id"]),
            types=[AssociationSpec(association_category="HUBSPOT_DEFINED",
                                   association_type_id=204)],
        )  # fmt: skip
        task = SimplePublicObjectBatchInputForCreate(properties=props, associations=[link])
        inputs.append((r.email, r.qualified_at, task))
    for start in range(0, len(inputs), BATCH):
        chunk = inputs[start : start + BATCH]
        limited(hs)
        resp = hs.crm.objects.tasks.batch_api.create(
            batch_input_simple_public_object_batch_input_for_create=(
                BatchInputSimplePublicObjectBatchInputForCreate(inputs=[i for _, _, i in chunk])
            ),
        )
        # HubSpot does not promise results in input order, so tasks are not matched to leads
        # by position; a batch HubSpot took only in part is retried whole next run.
        if len(resp.results or []) == len(chunk):
            made += [(e, q, f"task batch of {len(chunk)}") for e, q, _ in chunk]
        else:
            log.warning("HubSpot created %s of %s tasks; the batch is retried next run",
                        len(resp.results or []), len(chunk))  # fmt: skip
    return made


def post_slack(session: requests.Session, url: str, todo: pd.DataFrame) -> list[tuple]:
    """Post the leads to a Slack incoming webhook, 20 per message, at most one message a second."""
    from pql.events.transport import send

    budget, posted = Budget([(1, 1.0)]), []
    rows = list(todo.itertuples())
    for start in range(0, len(rows), SLACK_LEADS_PER_MESSAGE):
        chunk = rows[start : start + SLACK_LEADS_PER_MESSAGE]
        lines = [f"• {r.email} — score {r.score}: {r.reasons}" for r in chunk]
        text = f"{len(chunk)} new product-qualified lead(s):\n" + "\n".join(lines)
        budget.acquire()
        resp = send(session, "POST", url, attempts=4, json={"text": text}, timeout=30)
        if resp.status_code != 200:
            raise RuntimeError(f"Slack webhook answered {resp.status_code}: {resp.text[:200]}")
        posted += [(r.email, r.qualified_at) for r in chunk]
    return posted
