"""Follow-up Tasks in Salesforce for newly qualified leads (routing's CRM channel)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import pandas as pd

from pql.config import Routing
from pql.crm.salesforce import (
    COLLECTION,
    SalesforceCrm,
    find_records,
    match_keys,
    write_collections,
)

log = logging.getLogger(__name__)

SUBJECT_MAX, DESCRIPTION_MAX = 255, 32000  # Task.Subject and Task.Description lengths
USER_PREFIX = "005"  # User ids; a Lead's owner may also be a queue (00G)


def create_tasks(
    call: SalesforceCrm,
    todo: pd.DataFrame,
    rule: Routing,
    now: datetime,
    *,
    made: list | None = None,
) -> list[tuple]:
    """One Salesforce Task per lead on its Lead or Contact (a converted Lead's Contact), owned
    by that record's owner; created 200 a call through sObject Collections.

    Returns (email, qualified_at, task id) per task made, also appended to `made` batch by
    batch. A task Salesforce rejects is left out (retried next run), as is a lead not yet in
    Salesforce (the sync creates it; routed on a later run).
    """
    made = [] if made is None else made
    if todo.empty:
        return made
    call = call.operation()
    # Found the way the sync finds them, so the task lands on the record holding the score.
    key_of = match_keys(todo, call.target)
    found = find_records(call, sorted(set(key_of.values())), call.target)
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
            leads[chunk], write_collections(call, writes[chunk]), strict=True
        ):
            if res["status"] == "written":
                made.append((email, qualified_at, res["record_id"]))
            else:
                failed.append(f"{email}: {res['status_code']} {res['message']}")
    if failed:
        log.warning("Salesforce refused %s of %s tasks (retried next run); e.g. %s",
                    len(failed), len(writes), "; ".join(failed[:5]))  # fmt: skip
    return made
