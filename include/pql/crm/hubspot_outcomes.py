"""Outcomes from HubSpot: meetings, closed-won deals and completed tasks, with contact emails.

`pull(hs, since)` returns what changed since `since` (everything when None) in the shape
pql.report.outcomes keeps: per kind, the rows to hold and every record id the pull saw, so a meeting
re-linked, a deal no longer closed-won or a task reopened replaces its old rows. Meetings keep
their `hs_meeting_outcome` (cancelled and no-show ones are left out of the rates by the report).

Changes are found by the last-modified date (`hs_lastmodifieddate` on meetings, deals and
tasks) through search_all, which pages past the search's 10,000-result cap. A first pull asks
only for closed-won deals and completed tasks; later ones for every deal and task modified,
whatever its stage or status, so that un-won deals and reopened tasks drop out. Archived
(deleted) records never appear in a search: they leave the store at its periodic full pull.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pandas as pd
from hubspot import HubSpot
from hubspot.crm.associations.v4 import (
    BatchInputPublicFetchAssociationsBatchRequest,
    PublicFetchAssociationsBatchRequest,
)
from hubspot.crm.contacts import BatchReadInputSimplePublicObjectId, SimplePublicObjectId
from hubspot.crm.objects import Filter

from pql.crm.hubspot import limited, search_all
from pql.report.outcomes import KINDS, Changes

log = logging.getLogger(__name__)

MODIFIED = "hs_lastmodifieddate"  # on meetings, deals and tasks (contacts: lastmodifieddate)


def iso_ms(t: datetime) -> str:
    """HubSpot's datetime format with milliseconds (a watermark loses nothing to rounding)."""
    t = t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def associated(hs: HubSpot, from_type: str, to_type: str, ids: list[str]) -> dict[str, list[str]]:
    """Map each record id to the ids of its associated records (v4 batch read, 1,000 per call)."""
    out: dict[str, list[str]] = {}
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        limited(hs)
        resp = hs.crm.associations.v4.batch_api.get_page(
            from_object_type=from_type,
            to_object_type=to_type,
            batch_input_public_fetch_associations_batch_request=(
                BatchInputPublicFetchAssociationsBatchRequest(
                    inputs=[PublicFetchAssociationsBatchRequest(id=i) for i in chunk]
                )
            ),
        )
        for r in resp.results or []:
            out.setdefault(str(r._from.id), []).extend(str(t.to_object_id) for t in r.to or [])
    return out


def contact_emails(hs: HubSpot, ids: list[str]) -> dict[str, str]:
    """Contact id → lower-cased email (batch read, 100 per call)."""
    out = {}
    for start in range(0, len(ids), 100):
        limited(hs)
        resp = hs.crm.contacts.batch_api.read(
            batch_read_input_simple_public_object_id=BatchReadInputSimplePublicObjectId(
                inputs=[SimplePublicObjectId(id=i) for i in ids[start : start + 100]],
                properties=["email"],
                properties_with_history=[],
            )
        )
        for c in resp.results or []:
            email = (c.properties or {}).get("email")
            if email:
                out[str(c.id)] = email.lower()
    return out


def _search(hs: HubSpot, object_type: str, since, first: list, properties: list[str]) -> list:
    """Records modified at/after `since` (any state), or on a first pull those passing `first`."""
    if since is None:
        filters = first
    else:
        filters = [Filter(property_name=MODIFIED, operator="GTE", value=iso_ms(since))]
    return list(search_all(hs, object_type, filters, [*properties, MODIFIED]))


def pull(hs: HubSpot, since: datetime | None) -> dict[str, Changes]:
    """Meetings, closed-won deals and completed tasks changed since `since` (all when None)."""
    meetings = _search(hs, "meetings", since, [], ["hs_timestamp", "hs_meeting_outcome"])
    deals = _search(
        hs,
        "deals",
        since,
        [Filter(property_name="hs_is_closed_won", operator="EQ", value="true")],
        ["closedate", "amount", "dealname", "hs_is_closed_won"],
    )
    tasks = _search(
        hs,
        "tasks",
        since,
        [Filter(property_name="hs_task_status", operator="EQ", value="COMPLETED")],
        ["hs_timestamp", "hs_task_status", "hs_task_completion_date"],
    )
    held = [m for m in meetings if (m.properties or {}).get("hs_timestamp")]
    won = [
        d
        for d in deals
        if (d.properties or {}).get("hs_is_closed_won") == "true"
        and (d.properties or {}).get("closedate")
    ]
    done = [t for t in tasks if (t.properties or {}).get("hs_task_status") == "COMPLETED"]
    links = {
        kind: associated(hs, kind, "contacts", [str(r.id) for r in rows])
        for kind, rows in (("meetings", held), ("deals", won), ("tasks", done))
        if rows
    }
    contact_ids = sorted({c for by in links.values() for ids in by.values() for c in ids})
    emails = contact_emails(hs, contact_ids)

    def rows(kind: str, records: list, row) -> list[dict]:
        by = links.get(kind, {})
        return [
            {**row(r.properties), "id": str(r.id), "email": emails[c]}
            for r in records
            for c in dict.fromkeys(by.get(str(r.id), []))
            if c in emails
        ]

    meeting_rows = rows(
        "meetings",
        held,
        lambda p: {"at": pd.Timestamp(p["hs_timestamp"]), "outcome": p.get("hs_meeting_outcome")},
    )
    won_rows = rows(
        "deals",
        won,
        lambda p: {"at": pd.Timestamp(p["closedate"]), "amount": float(p.get("amount") or 0)},
    )
    task_rows = rows(
        "tasks",
        done,
        lambda p: {"at": pd.Timestamp(p.get("hs_task_completion_date") or p.get("hs_timestamp"))},
    )
    log.info(
        "HubSpot (%s): %s meetings, %s deals (%s won), %s tasks (%s completed); %s contacts",
        "all" if since is None else f"modified since {iso_ms(since)}",
        len(meetings),
        len(deals),
        len(won),
        len(tasks),
        len(done),
        len(emails),
    )
    return {
        "meetings": _changes("meetings", meeting_rows, meetings),
        "won": _changes("won", won_rows, deals),
        "tasks": _changes("tasks", task_rows, tasks),
    }


def _changes(kind: str, rows: list[dict], seen: list) -> Changes:
    _, id_col, at_col, columns = KINDS[kind]
    frame = pd.DataFrame(rows, columns=["id", "email", "at", "amount", "outcome"])
    frame = frame.rename(columns={"id": id_col, "at": at_col})[columns]
    return Changes(frame, {str(r.id) for r in seen})
