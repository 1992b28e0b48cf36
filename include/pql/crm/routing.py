"""Routing newly qualified leads: a follow-up task for the owner in the CRM, a Slack message.

Each channel acts at most once per lead per qualification: a ledger in the lake records
(email, qualified_at, channel) once done, and a lead only qualifies once (qualified_at is kept).
The CRM task goes to HubSpot or Salesforce, whichever CRM is configured.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pandas as pd
import requests

from pql import notify
from pql.config import HubSpotTarget, Routing, SalesforceTarget
from pql.http import Budget
from pql.lake import Lake
from pql.notify import SentOnce

log = logging.getLogger(__name__)

SLACK_LEADS_PER_MESSAGE = 20
SUBJECT_MAX, DESCRIPTION_MAX = 255, 32000  # Task.Subject and Task.Description lengths
USER_PREFIX = "005"  # User ids; a Lead's owner may also be a queue (00G)


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
    crm=None,
    target: HubSpotTarget | SalesforceTarget | None = None,
    login=None,
    slack: tuple[requests.Session, str] | None = None,
    now: datetime | None = None,
) -> dict:
    """Create the configured follow-ups for newly qualified leads; returns counts per channel.

    `crm` is the client of the configured CRM `target` (HubSpot when no target is given); for
    Salesforce, `login` builds a fresh client when the session expires.
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
            if target is not None and target.kind == "salesforce":
                from pql.crm.salesforce import _Session

                call = crm if isinstance(crm, _Session) else _Session(crm, login)
                salesforce_tasks(call, todo, rule, now, target=target, made=made)
            else:
                hubspot_tasks(crm, todo, rule, now, made=made)
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


def hubspot_tasks(
    hs, todo: pd.DataFrame, rule: Routing, now: datetime, *, made: list | None = None
) -> list[tuple]:
    """One HubSpot task per lead, assigned to the contact's owner and associated with it.

    Returns (email, qualified_at, detail) per task made, also appended to `made` batch by batch.
    """
    from hubspot.crm.objects.tasks import (
        AssociationSpec,
        BatchInputSimplePublicObjectBatchInputForCreate,
        PublicAssociationsForObject,
        PublicObjectId,
        SimplePublicObjectBatchInputForCreate,
    )

    from pql.crm.hubspot import BATCH, limited, read_contacts

    made = [] if made is None else made
    if todo.empty:
        return made
    held = read_contacts(hs, list(todo["email"]), ["hs_object_id", "hubspot_owner_id"])
    due = (now + timedelta(hours=rule.task_due_hours)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    inputs = []
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


def salesforce_tasks(
    call_or_sf,
    todo: pd.DataFrame,
    rule: Routing,
    now: datetime,
    *,
    target: SalesforceTarget | None = None,
    made: list | None = None,
) -> list[tuple]:
    """One Salesforce Task per lead on its Lead or Contact (a converted Lead's Contact), owned
    by that record's owner; created 200 a call through sObject Collections.

    Returns (email, qualified_at, task id) per task made, also appended to `made` batch by
    batch. A task Salesforce rejects is left out (retried next run), as is a lead not yet in
    Salesforce (the sync creates it; routed on a later run).
    """
    from pql.crm.salesforce import COLLECTION, _collections, _match_keys, _Session, find_records

    made = [] if made is None else made
    if todo.empty:
        return made
    target = target or SalesforceTarget(kind="salesforce")
    call = call_or_sf if isinstance(call_or_sf, _Session) else _Session(call_or_sf, None)
    # Found the way the sync finds them, so the task lands on the record holding the score.
    key_of = _match_keys(todo, target)
    found = find_records(call, sorted(set(key_of.values())), target)
    due = (now + timedelta(hours=rule.task_due_hours)).date().isoformat()
    writes, leads = [], []
    for r in todo.itertuples():
        record = found.get(key_of.get(str(r.email).lower(), ""))
        if record is None:
            continue  # not in Salesforce yet (the sync creates it): routed on a later run
        task = {
            "attributes": {"type": "Task"},
            "WhoId": record.id,
            "Subject": rule.task_subject.format(email=r.email, score=r.score)[:SUBJECT_MAX],
            "Description": f"PQL score {r.score}: {r.reasons}"[:DESCRIPTION_MAX],
            "ActivityDate": due,
            "Status": "Not Started",
            "Priority": "High",
        }
        if record.object == "Contact" and record.account:
            task["WhatId"] = record.account  # a Lead's task may not have a Related To
        # Leads are often owned by a queue (00G...), which cannot own a task: the task then
        # stays with the integration user rather than being refused.
        if str(record.owner or "").startswith(USER_PREFIX):
            task["OwnerId"] = record.owner
        writes.append({"email": r.email, "object": "Task", "id": None, "record": task})
        leads.append((r.email, r.qualified_at))
    failed = []
    for start in range(0, len(writes), COLLECTION):
        chunk = slice(start, start + COLLECTION)
        for (email, qualified_at), res in zip(
            leads[chunk], _collections(call, writes[chunk]), strict=True
        ):
            if res["status"] == "written":
                made.append((email, qualified_at, res["record_id"]))
            else:
                failed.append(f"{email}: {res['status_code']} {res['message']}")
    if failed:
        log.warning("Salesforce refused %s of %s tasks (retried next run); e.g. %s",
                    len(failed), len(writes), "; ".join(failed[:5]))  # fmt: skip
    return made


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
