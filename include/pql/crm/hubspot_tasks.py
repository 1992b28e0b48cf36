"""Follow-up tasks in HubSpot for newly qualified leads (routing's CRM channel)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import pandas as pd
from hubspot.crm.objects.tasks import (
    AssociationSpec,
    BatchInputSimplePublicObjectBatchInputForCreate,
    PublicAssociationsForObject,
    PublicObjectId,
    SimplePublicObjectBatchInputForCreate,
)

from pql.config import Routing
from pql.crm.hubspot import BATCH, HubSpotCrm, limited, read_contacts

log = logging.getLogger(__name__)


def create_tasks(
    hs: HubSpotCrm, todo: pd.DataFrame, rule: Routing, now: datetime, *, made: list | None = None
) -> list[tuple]:
    """One HubSpot task per lead, assigned to the contact's owner and associated with it.

    Returns (email, qualified_at, detail) per task made, also appended to `made` batch by batch.
    """
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
