"""Outcomes from Salesforce: meetings (Events), won Opportunities, completed Tasks, by email.

`pull(sf, since)` returns what changed since `since` (everything when None) in the shape
pql.report.outcomes keeps (rows to hold, and every record id seen so their old rows are replaced).

- Meetings are Events with a WhoId: a Contact's or a Lead's email (`Who.Email`). Converting a
  Lead moves its Events to the Contact, which changes them, so they are pulled again.
- Won deals are Opportunities with IsWon (the stage's setting, not its label), CloseDate (a
  date: won_at is its midnight UTC) and Amount, linked to people through their
  OpportunityContactRoles (the Contact's email) and the Lead converted with them
  (Lead.ConvertedOpportunityId → the Lead's email).
- Sales touches are closed Tasks with a WhoId, at CompletedDateTime (else CreatedDate); open
  ones (the follow-ups routing creates, say) are not a touch yet.

Changes are found by SystemModstamp. Every statement goes to queryAll, which also returns
deleted records (IsDeleted: their rows leave the store) and archived activities (Events and
closed Tasks older than a year, missing from /query). An Opportunity also counts as changed
when one of its contact roles or the Lead converted into it changed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

import pandas as pd
from simple_salesforce import Salesforce

from pql.crm.salesforce import LOOKUP, SalesforceCrm, adapter, in_chunks, soql_quote
from pql.report.outcomes import KINDS, Changes

log = logging.getLogger(__name__)


def soql_datetime(t: datetime) -> str:
    """A SOQL datetime literal, rounded down to the second (SOQL takes no fractions)."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _all(call: SalesforceCrm, soql: str) -> list[dict]:
    """Every record of `soql` from queryAll (deleted and archived ones included)."""
    return call(lambda sf: sf.query_all(soql, include_deleted=True))["records"]


def _all_in(call: SalesforceCrm, soql: str, values: list[str]) -> list[dict]:
    """queryAll of `soql` with `{in}` for a quoted IN list, LOOKUP values per statement."""
    out = []
    for i in range(0, len(values), LOOKUP):
        quoted = ", ".join(soql_quote(v) for v in values[i : i + LOOKUP])
        out += _all(call, soql.replace("{in}", quoted))
    return out


def _at(value: str | None) -> pd.Timestamp | None:
    return None if not value else pd.Timestamp(value).tz_convert("UTC")


def _email(record: dict, relation: str) -> str | None:
    email = (record.get(relation) or {}).get("Email")
    return email.lower() if email else None


def pull(
    sf: Salesforce,
    since: datetime | None,
    *,
    login: Callable[[], Salesforce] | None = None,
    outcome_field: str | None = None,
) -> dict[str, Changes]:
    """Events, won Opportunities and closed Tasks changed since `since` (all when None).

    `login`, if given, builds a fresh client when the session expires (once). Events carry no
    outcome in a standard org; `outcome_field` names a custom field that holds one (its values
    are compared with config `outcomes.excluded_meeting_outcomes`)."""
    call = adapter(sf, login)
    where = f"SystemModstamp >= {soql_datetime(since)}" if since is not None else None

    def when(first: str) -> str:
        return f"WHERE {where}" if where else f"WHERE {first} AND IsDeleted = false"

    extra = f", {outcome_field}" if outcome_field else ""
    events = _all(call, "SELECT Id, IsDeleted, WhoId, Who.Email, StartDateTime, ActivityDate, "
                  f"IsAllDayEvent{extra} FROM Event " + when("WhoId != null"))  # fmt: skip
    meeting_rows = []
    for e in events:
        at = _at(e.get("StartDateTime"))
        if e.get("IsAllDayEvent") or at is None:
            at = _at(e.get("ActivityDate") and e["ActivityDate"] + "T00:00:00Z")
        email = _email(e, "Who")
        if not e.get("IsDeleted") and email and at is not None:
            outcome = {k.lower(): v for k, v in e.items()}.get((outcome_field or "").lower())
            meeting_rows.append({"id": e["Id"], "email": email, "at": at, "outcome": outcome})

    opp_fields = "SELECT Id, IsDeleted, IsWon, CloseDate, Amount FROM Opportunity "
    opps = {r["Id"]: r for r in _all(call, opp_fields + when("IsWon = true"))}
    if where:
        # Opportunities whose people changed: a contact role added or removed, a Lead converted.
        linked = {
            r["OpportunityId"]
            for r in _all(call, f"SELECT OpportunityId FROM OpportunityContactRole WHERE {where}")
        }
        linked |= {
            r["ConvertedOpportunityId"]
            for r in _all(call, "SELECT ConvertedOpportunityId FROM Lead WHERE "
                          f"{where} AND ConvertedOpportunityId != null")
        }  # fmt: skip
        missing = sorted(i for i in linked if i and i not in opps)
        opps |= {r["Id"]: r for r in _all_in(call, opp_fields + "WHERE Id IN ({in})", missing)}
    won = {i: r for i, r in opps.items() if r.get("IsWon") and not r.get("IsDeleted")}
    won = {i: r for i, r in won.items() if r.get("CloseDate")}
    people: dict[str, set[str]] = {}
    ids = sorted(won)
    for r in in_chunks(call, "SELECT OpportunityId, Contact.Email FROM OpportunityContactRole "
                        "WHERE OpportunityId IN ({in})", ids):  # fmt: skip
        if email := _email(r, "Contact"):
            people.setdefault(r["OpportunityId"], set()).add(email)
    for r in in_chunks(call, "SELECT ConvertedOpportunityId, Email FROM Lead "
                        "WHERE ConvertedOpportunityId IN ({in})", ids):  # fmt: skip
        if r.get("Email"):
            people.setdefault(r["ConvertedOpportunityId"], set()).add(r["Email"].lower())
    won_rows = [
        {
            "id": i,
            "email": email,
            "at": pd.Timestamp(r["CloseDate"], tz="UTC"),
            "amount": float(r.get("Amount") or 0),
        }
        for i, r in won.items()
        for email in sorted(people.get(i, ()))
    ]

    tasks = _all(call, "SELECT Id, IsDeleted, IsClosed, WhoId, Who.Email, CompletedDateTime, "
                 "CreatedDate FROM Task " + when("IsClosed = true AND WhoId != null"))  # fmt: skip
    task_rows = []
    for t in tasks:
        email = _email(t, "Who")
        if t.get("IsClosed") and not t.get("IsDeleted") and email:
            at = _at(t.get("CompletedDateTime") or t.get("CreatedDate"))
            task_rows.append({"id": t["Id"], "email": email, "at": at})
    log.info(
        "Salesforce (%s): %s events, %s opportunities (%s won), %s tasks",
        "all" if where is None else where,
        len(events),
        len(opps),
        len(won),
        len(tasks),
    )
    return {
        "meetings": _changes("meetings", meeting_rows, events),
        "won": _changes("won", won_rows, opps.values()),
        "tasks": _changes("tasks", task_rows, tasks),
    }


def _changes(kind: str, rows: list[dict], seen) -> Changes:
    _, id_col, at_col, columns = KINDS[kind]
    frame = pd.DataFrame(rows, columns=["id", "email", "at", "amount", "outcome"])
    frame = frame.rename(columns={"id": id_col, "at": at_col})[columns]
    return Changes(frame, {r["Id"] for r in seen})
