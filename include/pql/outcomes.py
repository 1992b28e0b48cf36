"""CRM outcomes (meetings, won deals) joined to PQL history: conversion by weekly cohort."""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta

import pandas as pd
from hubspot import HubSpot
from hubspot.crm.associations.v4 import (
    BatchInputPublicFetchAssociationsBatchRequest,
    PublicFetchAssociationsBatchRequest,
)
from hubspot.crm.contacts import BatchReadInputSimplePublicObjectId, SimplePublicObjectId
from hubspot.crm.objects import Filter

from pql.crm.hubspot import limited, search_all
from pql.lake import Lake, atomic_dir

log = logging.getLogger(__name__)


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


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


def pull(hs: HubSpot, until: datetime) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Meetings held and deals won before `until`, each with its contacts' emails."""
    meetings = list(
        search_all(
            hs,
            "meetings",
            [Filter(property_name="hs_timestamp", operator="LT", value=_iso(until))],
            ["hs_timestamp", "hs_meeting_outcome"],
        )
    )
    deals = list(
        search_all(
            hs,
            "deals",
            [
                Filter(property_name="hs_is_closed_won", operator="EQ", value="true"),
                Filter(property_name="closedate", operator="LT", value=_iso(until)),
            ],
            ["closedate", "amount", "dealname"],
        )
    )
    m_links = associated(hs, "meetings", "contacts", [m.id for m in meetings])
    d_links = associated(hs, "deals", "contacts", [d.id for d in deals])
    contact_ids = sorted({c for links in (m_links, d_links) for v in links.values() for c in v})
    emails = contact_emails(hs, contact_ids)
    meeting_rows = [
        {
            "meeting_id": m.id,
            "email": emails[c],
            "meeting_at": pd.Timestamp(m.properties["hs_timestamp"]),
        }
        for m in meetings
        for c in m_links.get(str(m.id), [])
        if c in emails
    ]
    won_rows = [
        {
            "deal_id": d.id,
            "email": emails[c],
            "won_at": pd.Timestamp(d.properties["closedate"]),
            "amount": float(d.properties.get("amount") or 0),
        }
        for d in deals
        for c in d_links.get(str(d.id), [])
        if c in emails
    ]
    log.info(
        "pulled %s meetings and %s won deals from HubSpot (%s linked contacts)",
        len(meetings),
        len(deals),
        len(emails),
    )
    return (
        pd.DataFrame(meeting_rows, columns=["meeting_id", "email", "meeting_at"]),
        pd.DataFrame(won_rows, columns=["deal_id", "email", "won_at", "amount"]),
    )


def save(lake: Lake, week: date, meetings: pd.DataFrame, won: pd.DataFrame) -> str:
    """Keep the week's pulled outcomes in the lake (replacing any earlier pull of that week)."""
    with atomic_dir(lake.outcomes(week)) as tmp:
        meetings.to_parquet(tmp / "meetings.parquet", index=False)
        won.to_parquet(tmp / "won_deals.parquet", index=False)
    return str(lake.outcomes(week))


def week_start(t: date) -> date:
    return t - timedelta(days=t.weekday())


def attribute(
    users: pd.DataFrame, meetings: pd.DataFrame, won: pd.DataFrame, window_days: int
) -> pd.DataFrame:
    """Per user: PQL or not, its cohort week, and whether a meeting / win followed in the window.

    PQLs start at their first qualification, everyone else at sign-up (first seen); only
    outcomes on or after the start and within `window_days` of it count.
    """
    u = users[users["email"].notna()][["email", "first_seen", "qualified_at"]].copy()
    u["is_pql"] = u["qualified_at"].notna()
    u["start"] = pd.to_datetime(u["qualified_at"].where(u["is_pql"], u["first_seen"]), utc=True)
    u["cohort_week"] = u["start"].dt.tz_convert(None).dt.to_period("W-SUN").dt.start_time.dt.date
    window = pd.Timedelta(days=window_days)
    for label, frame, col in (("meeting", meetings, "meeting_at"), ("won", won, "won_at")):
        first = _first_after(u, frame, col, window)
        u[f"{label}_at"] = first
        u[label] = first.notna()
    amounts = won.groupby("email")["amount"].sum() if len(won) else pd.Series(dtype=float)
    u["won_amount"] = u["email"].map(amounts).where(u["won"], 0.0).fillna(0.0)
    return u.reset_index(drop=True)


def _first_after(u: pd.DataFrame, frame: pd.DataFrame, col: str, window) -> pd.Series:
    if frame.empty:
        return pd.Series(pd.NaT, index=u.index, dtype="datetime64[us, UTC]")
    j = u[["email", "start"]].reset_index().merge(frame[["email", col]], on="email")
    t = pd.to_datetime(j[col], utc=True)
    j = j[(t >= j["start"]) & (t <= j["start"] + window)].assign(t=t)
    first = j.groupby("index")["t"].min()
    return u.index.to_series().map(first).astype("datetime64[us, UTC]")


def cohort_rates(per_user: pd.DataFrame, as_of: datetime, window_days: int) -> pd.DataFrame:
    """PQL→meeting and PQL→won rates per weekly cohort, non-PQL sign-ups alongside.

    A cohort is immature while its last member's window is still open at `as_of`.
    """
    g = per_user.groupby(["cohort_week", "is_pql"])
    table = g.agg(
        users=("email", "size"),
        meetings=("meeting", "sum"),
        won=("won", "sum"),
        won_amount=("won_amount", "sum"),
    ).reset_index()
    table["group"] = table.pop("is_pql").map({True: "PQL", False: "non-PQL"})
    table["meeting_rate"] = (table["meetings"] / table["users"]).round(4)
    table["won_rate"] = (table["won"] / table["users"]).round(4)
    closes = pd.to_datetime(table["cohort_week"]) + pd.Timedelta(days=7 + window_days)
    table["mature"] = closes.dt.tz_localize("UTC") <= pd.Timestamp(as_of)
    cols = [
        "cohort_week",
        "group",
        "users",
        "meetings",
        "meeting_rate",
        "won",
        "won_rate",
        "won_amount",
        "mature",
    ]
    return (
        table[cols]
        .sort_values(["cohort_week", "group"], ascending=[True, False])
        .reset_index(drop=True)
    )


def totals(per_user: pd.DataFrame) -> pd.DataFrame:
    """All cohorts together, PQL vs non-PQL, with the lift of PQLs over non-PQLs."""
    t = (
        per_user.groupby("is_pql")
        .agg(users=("email", "size"), meetings=("meeting", "sum"), won=("won", "sum"))
        .reset_index()
    )
    t["group"] = t.pop("is_pql").map({True: "PQL", False: "non-PQL"})
    t["meeting_rate"] = (t["meetings"] / t["users"]).round(4)
    t["won_rate"] = (t["won"] / t["users"]).round(4)
    return t[["group", "users", "meetings", "meeting_rate", "won", "won_rate"]]
